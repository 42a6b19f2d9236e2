"""`finetune-assets db upgrade|current`: the platform tables' schema revision, on the configured database
(`DATABASE_URL`, else the SQLite file under the state directory, as every other verb)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from finetune_assets.errors import FinetuneAssetsError


def register(commands: Any) -> None:
    """Add the `db` verbs to the CLI's subcommands."""
    db = commands.add_parser("db", help="the platform tables' schema: upgrade it to this release, or show it")
    verbs = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = verbs.add_parser(
        "upgrade",
        help="upgrade the platform tables to this release's schema (what start does unless FINETUNE_DB_AUTO_UPGRADE=0)",
    )
    upgrade.set_defaults(func=cmd_upgrade)
    current = verbs.add_parser("current", help="print the platform tables' revision and this release's head")
    current.set_defaults(func=cmd_current)


def _engine(args: argparse.Namespace) -> sa.Engine:
    from finetune_assets.resources.store import StoreResource
    from finetune_assets.settings import load_settings
    from finetune_assets.store.engine import make_engine

    settings = load_settings(Path(args.config)) if args.config else load_settings()
    resource = StoreResource(database_url=os.environ.get("DATABASE_URL"), state_dir=str(settings.resolved_state_dir()))
    return make_engine(resource.url())


def _fail(exc: Exception) -> int:
    message = str(exc.orig).strip() if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else str(exc)
    print(f"finetune-assets: {' '.join(message.split())}", file=sys.stderr)
    return 1


def cmd_upgrade(args: argparse.Namespace) -> int:
    from finetune_assets.store.migrate import upgrade

    engine = _engine(args)
    try:
        change = upgrade(engine)
    except (FinetuneAssetsError, sa.exc.SQLAlchemyError) as exc:
        return _fail(exc)
    finally:
        engine.dispose()
    before, after = change.before.describe(), change.after.describe()
    print(f"already at head {after}" if before == after else f"upgraded from {before} to {after} (head)")
    return 0


def cmd_current(args: argparse.Namespace) -> int:
    from finetune_assets.store.migrate import SchemaTooNewError, schema_status

    engine = _engine(args)
    try:
        status = schema_status(engine)
    except (FinetuneAssetsError, sa.exc.SQLAlchemyError) as exc:
        return _fail(exc)
    finally:
        engine.dispose()
    if status.unknown:
        return _fail(
            SchemaTooNewError(
                f"revision {', '.join(status.unknown)} is newer than this release's head {status.head}: "
                "run a release that knows it"
            )
        )
    note = "(head)" if status.at_head else f"(head is {status.head}: run `finetune-assets db upgrade`)"
    print(f"{status.describe()} {note}")
    return 0
