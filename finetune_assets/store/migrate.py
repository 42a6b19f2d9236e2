"""Bring a database's platform tables to the schema this release expects, with the Alembic revisions in
`store/migrations/`.

On start (`ensure_schema`, called by every store):
- at this release's head: nothing to do (one read of the version table);
- a fresh database (no `ft_*` table): every revision runs, creating the tables;
- a database the first release created (platform tables, no version table): its tables are compared with the
  initial revision; equal, it is stamped with it and upgraded; different, start is refused and nothing changes;
- an older revision: upgraded to head;
- a revision this release does not know (a newer release upgraded the database): refused, never downgraded.

`FINETUNE_DB_AUTO_UPGRADE=0` (also `false`, `no`, `off`) turns the upgrade on start off: a schema that is not
at head is then refused with a message to run `finetune-assets db upgrade`, for deployments that migrate as a
separate, deliberate step. Upgrades run in one transaction; on Postgres concurrent starters serialize on an
advisory lock, on SQLite on the database's write lock. The version table is `ft_alembic_version`: Dagster and
MLflow keep their own `alembic_version` in the same database. Alembic is imported only when a store starts.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finetune_assets.errors import FinetuneAssetsError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

VERSION_TABLE = "ft_alembic_version"
INITIAL_REVISION = "0001_initial"
"""The schema of the release before migrations: what an unversioned database must match to be stamped."""
AUTO_UPGRADE_ENV = "FINETUNE_DB_AUTO_UPGRADE"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
PG_LOCK_KEY = zlib.crc32(b"finetune_assets.store.migrate")
"""The Postgres advisory lock (transaction scoped) that upgrades of the platform tables take."""
_IN_PROCESS = threading.Lock()
"""Alembic's `context` and `op` are module-global proxies: one thread of a process migrates at a time."""


class DatabaseSchemaError(FinetuneAssetsError):
    """The database's platform tables cannot be brought to this release's schema on start."""


class SchemaTooNewError(DatabaseSchemaError):
    """The database is at a revision this release does not know: a newer release upgraded it."""


class SchemaOutOfDateError(DatabaseSchemaError):
    """The schema is behind this release's head and the upgrade on start is turned off."""


class SchemaMismatchError(DatabaseSchemaError):
    """Unversioned platform tables that differ from the initial revision: stamping them would be a lie."""


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's platform schema stands against this release's revisions."""

    database: str  # the URL without its password
    current: tuple[str, ...]  # the revisions in the version table (none: fresh, or from the first release)
    head: str
    known: frozenset[str]  # every revision this release ships
    platform_tables: frozenset[str]

    @property
    def at_head(self) -> bool:
        return self.current == (self.head,)

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(r for r in self.current if r not in self.known)

    @property
    def unversioned(self) -> bool:
        """Platform tables created before migrations existed (by `metadata.create_all`)."""
        return not self.current and bool(self.platform_tables)

    def describe(self) -> str:
        if self.current:
            return ", ".join(self.current)
        if self.unversioned:
            return "none (platform tables from a release before migrations)"
        return "none (no platform tables yet)"


@dataclass(frozen=True)
class SchemaChange:
    before: SchemaStatus
    after: SchemaStatus


def include_name(name: str | None, type_: str, _parent: Any) -> bool:
    """Only the platform's tables take part in migrations and comparisons (never `generated_posts`)."""
    if type_ != "table":
        return True
    return name is not None and name.startswith("ft_") and name != VERSION_TABLE


def alembic_config(connection: Connection) -> Config:
    """The Alembic configuration of the platform tables, in code: no alembic.ini, works from an installed package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR))


def _status(conn: Connection, script: ScriptDirectory) -> SchemaStatus:
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    tables = sa.inspect(conn).get_table_names()
    return SchemaStatus(
        database=conn.engine.url.render_as_string(hide_password=True),
        current=tuple(sorted(context.get_current_heads())),
        head=_head(script),
        known=frozenset(rev.revision for rev in script.walk_revisions()),
        platform_tables=frozenset(t for t in tables if include_name(t, "table", None)),
    )


def _head(script: ScriptDirectory) -> str:
    head = script.get_current_head()
    if head is None:  # pragma: no cover - the package always ships the initial revision
        raise DatabaseSchemaError(f"no migrations found under {MIGRATIONS_DIR}")
    return head


def schema_status(engine: Engine) -> SchemaStatus:
    """Read-only: what `finetune-assets db current` prints."""
    with engine.connect() as conn:
        return _status(conn, _script())


def _auto_upgrade() -> bool:
    return os.environ.get(AUTO_UPGRADE_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def ensure_schema(engine: Engine) -> None:
    """Called by every store on start: upgrade to head where that is safe, refuse with one clear error where not."""
    status = schema_status(engine)
    if status.at_head:
        return
    _refuse_unknown(status)
    if not _auto_upgrade():
        raise SchemaOutOfDateError(
            f"the platform tables in {status.database} are at revision {status.describe()}, this release needs "
            f"{status.head}, and {AUTO_UPGRADE_ENV}=0 turns the upgrade on start off: run `finetune-assets db "
            "upgrade` with the same DATABASE_URL, then start again"
        )
    upgrade(engine)


def upgrade(engine: Engine) -> SchemaChange:
    """Upgrade the platform tables to head (stamping a first-release database first), in one transaction under
    a lock, so that concurrent starters wait for the first and then find the schema at head."""
    from alembic import command

    script = _script()
    with _IN_PROCESS, _locked(engine) as conn:
        before = _status(conn, script)  # read under the lock: another starter may have upgraded meanwhile
        _refuse_unknown(before)
        if not before.at_head:
            if before.unversioned:
                _verify_initial(conn, script, before)
                command.stamp(alembic_config(conn), INITIAL_REVISION)
            command.upgrade(alembic_config(conn), "head")
        after = _status(conn, script)
    return SchemaChange(before, after)


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """One transaction holding the database's migration lock: Postgres DDL is transactional, so an upgrade
    commits whole or not at all; SQLite's `BEGIN IMMEDIATE` takes the write lock before the first read."""
    with engine.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite has not begun yet: it begins lazily, before DML
        yield conn


def _refuse_unknown(status: SchemaStatus) -> None:
    if status.unknown:
        raise SchemaTooNewError(
            f"the platform tables in {status.database} are at revision {', '.join(status.unknown)}, which this "
            f"release does not know (its newest is {status.head}): a newer finetune-assets upgraded them. Run that "
            "release or a newer one against this database (this one never downgrades), or restore a backup taken "
            "before the upgrade"
        )


def _verify_initial(conn: Connection, script: ScriptDirectory, status: SchemaStatus) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"include_name": include_name, "compare_type": True})
    diffs = compare_metadata(context, initial_metadata(script, conn.dialect))
    if diffs:
        shown = "; ".join(_describe(d) for d in diffs[:5]) + ("; ..." if len(diffs) > 5 else "")
        raise SchemaMismatchError(
            f"the platform tables in {status.database} have no version table and differ from revision "
            f"{INITIAL_REVISION}, the schema of the release before migrations ({len(diffs)} differences: {shown}); "
            "nothing was changed. Bring them back to that schema (or restore a backup), then run "
            "`finetune-assets db upgrade`"
        )


def initial_metadata(script: ScriptDirectory, dialect: sa.Dialect) -> sa.MetaData:
    """The tables the initial revision creates, read from its own `op.create_table`/`op.create_index` calls
    (recorded, not executed), so that revision is the one statement of the first release's schema."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations, ops

    recorded: list[ops.MigrateOperation] = []
    revision = script.get_revision(INITIAL_REVISION)
    assert revision is not None
    with Operations.context(MigrationContext.configure(dialect=dialect)) as operations:
        operations.invoke = recorded.append  # type: ignore[method-assign,assignment]
        revision.module.upgrade()
    meta = sa.MetaData()
    for operation in recorded:
        if isinstance(operation, ops.CreateTableOp):
            sa.Table(operation.table_name, meta, *operation.columns, schema=operation.schema, **operation.kw)
        elif isinstance(operation, ops.CreateIndexOp):
            table = meta.tables[operation.table_name]
            columns: Sequence[Any] = [table.c[c] if isinstance(c, str) else c for c in operation.columns]
            sa.Index(operation.index_name, *columns, unique=bool(operation.unique), **operation.kw)
        else:  # pragma: no cover - the initial revision creates tables and indexes only
            raise AssertionError(f"{INITIAL_REVISION} may only create tables and indexes, not {operation!r}")
    return meta


_WORDS = {"add": "missing", "remove": "unexpected", "modify": "different"}


def _describe(diff: Any) -> str:
    """One autogenerate difference from the database's side, e.g. `missing index ix_ft_models_partition_key`."""
    item = diff[0] if isinstance(diff, list) else diff
    verb, _, what = str(item[0]).partition("_")
    words = f"{_WORDS.get(verb, verb)} {what}"
    if verb == "modify":  # (kind, schema, table, column, ...)
        return f"{words} of {item[2]}.{item[3]}"
    if what == "column":  # (kind, schema, table, column)
        return f"{words} {item[2]}.{item[3].name}"
    target = item[1]
    name = getattr(target, "name", None) or getattr(getattr(target, "table", None), "name", None) or target
    return f"{words} {name}"
