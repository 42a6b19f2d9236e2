"""The SQLAlchemy engine for the embedded SQLite file or production Postgres, with its pool and limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


@dataclass(frozen=True)
class EngineOptions:
    """Connection pool and server-side limits for a Postgres engine (SQLite ignores them).

    A process holds one engine per database (`_store_for`). A run worker or step pod uses one or two
    connections at a time and the code server's sensor threads (4) one each, so 5 pooled + 5 overflow
    connections per process are ample; the server needs about 10 x (pods + code servers) connections.
    `pool_pre_ping` replaces connections that died while idle (a restarted server, a proxy timeout) and
    `pool_recycle` retires them before common idle cutoffs. `statement_timeout_s` is sent as the session's
    `statement_timeout`: a runaway query fails instead of holding a run or a sensor tick forever (each FETCH of
    a streamed read is its own statement). 0 disables it.
    """

    pool_size: int = 5
    max_overflow: int = 5
    pool_timeout_s: float = 30.0
    pool_recycle_s: int = 1800
    statement_timeout_s: float = 300.0
    connect_timeout_s: int = 10


def make_engine(url: str, options: EngineOptions | None = None) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    options = options or EngineOptions()
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":  # SQLAlchemy 2.1 would pick psycopg 3; we ship psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg2")
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        # The URL's own `options` (e.g. ?options=-c%20search_path%3Dapp) are kept: ours come after them.
        server_options = [str(parsed.query["options"])] if "options" in parsed.query else []
        server_options.append(f"-c statement_timeout={int(options.statement_timeout_s * 1000)}")
        connect_args = {
            "options": " ".join(server_options),
            "connect_timeout": options.connect_timeout_s,
            "application_name": "finetune-assets",
        }
    return sa.create_engine(
        parsed,
        connect_args=connect_args,
        pool_pre_ping=True,
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.pool_timeout_s,
        pool_recycle=options.pool_recycle_s,
    )


def driver_reason(exc: sa.exc.DBAPIError) -> str:
    """The driver's own first line for a database error (e.g. psycopg2's "server closed the connection
    unexpectedly"), else the error's type: the cause a one-line message names."""
    text = str(exc.orig).strip() if exc.orig is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__
