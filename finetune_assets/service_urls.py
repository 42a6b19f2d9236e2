"""The service URLs from the environment: `DATABASE_URL`, `REDIS_URL` and `MLFLOW_TRACKING_URI`.

Each is checked where it is read (the code location at load, the resources, the CLI), so a typo fails at start
with one line naming the variable and what was expected, never a driver's traceback in the middle of a run.
A message never shows a password: `mask` keeps the user and the host and writes `***` for the password.
Only the standard library is imported here; SQLAlchemy and Dagster are imported inside the functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.settings import ConfigError

DATABASE_URL_ENV = "DATABASE_URL"
REDIS_URL_ENV = "REDIS_URL"
MLFLOW_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

DATABASE_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg2"})
"""What `store.engine.make_engine` builds: SQLite, and Postgres through psycopg2 (the driver that ships)."""
EXPECTED_DATABASE = "expected sqlite:///PATH or postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DATABASE"
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
EXPECTED_REDIS = "expected redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or unix:///PATH/TO/SOCKET"
TRACKING_SCHEMES = frozenset({"http", "https", "file", "sqlite", "postgresql", "databricks"})
EXPECTED_TRACKING = (
    "expected http(s)://HOST[:PORT], file:///PATH, sqlite:///PATH, postgresql://..., databricks[://PROFILE] "
    "or a directory path"
)
_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&;])(?:password|passwd|pwd)=)[^&;#]*")


class ServiceUrlError(ConfigError):
    """A service URL in the environment that cannot work: one line, like a bad pipeline_config.yaml."""


class DatabaseUnreachable(FinetuneAssetsError, RuntimeError):
    """The database did not accept a connection: the message names the URL (masked) and what to check."""


def mask(url: str) -> str:
    """`url` fit for a message: the password (user:PASSWORD@, ?password=) becomes `***`, even when the URL
    does not parse. Everything up to the last `@` counts as credentials, so an `@` in a password is covered."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return _QUERY_SECRET.sub(r"\1***", f"{scheme}{sep}{rest}")


def _password(url: str) -> str | None:
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    return userinfo.split(":", 1)[1] if at and ":" in userinfo else None


def env_value(value: str | None) -> str | None:
    """A resource field's value. The definitions hold a `dg.EnvVar` (whose text is the variable's *name*); a
    run gets it resolved, but a resource used outside a run (the CLI, the demo) must read the variable."""
    from dagster import EnvVar

    return value.get_value() if isinstance(value, EnvVar) else value


def check_database_url(url: str, variable: str = DATABASE_URL_ENV) -> str:
    """`url` if SQLAlchemy can parse it and it names a driver this package supports; else `ServiceUrlError`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ServiceUrlError(f"{variable}={mask(url)}: not a SQLAlchemy URL; {EXPECTED_DATABASE}") from None
    except ValueError:  # the port is not a number (the message would quote it: it may hold part of a password)
        raise ServiceUrlError(f"{variable}={mask(url)}: the port is not a number; {EXPECTED_DATABASE}") from None
    if parsed.drivername not in DATABASE_DRIVERS:
        hint = " (SQLAlchemy spells it postgresql://)" if parsed.drivername == "postgres" else ""
        raise ServiceUrlError(
            f"{variable}={mask(url)}: unsupported driver {parsed.drivername!r}{hint}; {EXPECTED_DATABASE}"
        )
    return url


def _split(url: str, variable: str, expected: str) -> Any:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ServiceUrlError(f"{variable}={mask(url)}: not a URL (bad host or port); {expected}") from None
    return parts


def check_redis_url(url: str, variable: str = REDIS_URL_ENV) -> str:
    """`url` if redis-py's `from_url` accepts its scheme, port and database number; else `ServiceUrlError`."""
    parts = _split(url, variable, EXPECTED_REDIS)
    if parts.scheme not in REDIS_SCHEMES:
        found = f"unsupported scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ServiceUrlError(f"{variable}={mask(url)}: {found}; {EXPECTED_REDIS}")
    if parts.scheme == "unix" and not parts.path:
        raise ServiceUrlError(f"{variable}={mask(url)}: no socket path; {EXPECTED_REDIS}")
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ServiceUrlError(f"{variable}={mask(url)}: database {database!r} is not a number; {EXPECTED_REDIS}")
    return url


def check_tracking_uri(uri: str, variable: str = MLFLOW_TRACKING_URI_ENV) -> str:
    """`uri` if MLflow can use it as a tracking URI (a server, a database, a directory); else `ServiceUrlError`."""
    parts = _split(uri, variable, EXPECTED_TRACKING)
    base, plus, _driver = parts.scheme.partition("+")
    if not parts.scheme:
        return uri  # a directory path
    if base not in TRACKING_SCHEMES or (plus and base not in ("sqlite", "postgresql")):
        raise ServiceUrlError(f"{variable}={mask(uri)}: unsupported scheme {parts.scheme!r}; {EXPECTED_TRACKING}")
    if base in ("http", "https") and not parts.hostname:
        raise ServiceUrlError(f"{variable}={mask(uri)}: no host; {EXPECTED_TRACKING}")
    return uri


CHECKS = {
    DATABASE_URL_ENV: check_database_url,
    REDIS_URL_ENV: check_redis_url,
    MLFLOW_TRACKING_URI_ENV: check_tracking_uri,
}


def check_service_url(variable: str, value: str) -> str:
    """`value` of `variable` checked by its rule (a variable without one passes unchanged)."""
    check = CHECKS.get(variable)
    return check(value, variable) if check is not None else value


@contextmanager
def connecting(url: str, *, variable: str | None = DATABASE_URL_ENV) -> Iterator[None]:
    """Turn a failed *connect* (refused, unknown host, bad credentials) into one `DatabaseUnreachable` line
    naming `variable` and the masked URL; errors of statements (a timeout, a constraint) pass unchanged.
    `variable` None: the URL is the embedded default, there is no variable to name."""
    import sqlalchemy as sa

    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        if exc.statement is not None:  # the connection was made: a statement failed
            raise
        from finetune_assets.store.engine import driver_reason

        reason = driver_reason(exc)
        password = _password(url)
        if password:
            reason = reason.replace(password, "***")
        where = f"{variable}={mask(url)}" if variable else f"the database at {mask(url)}"
        raise DatabaseUnreachable(
            f"{where}: cannot connect ({reason}); expected a reachable database: check the host, port, user and "
            "password (`make services` starts a local Postgres)"
        ) from None
