"""The SQL store as a Dagster resource: settings from the environment, one store per process and database."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import dagster as dg
from pydantic import Field

from finetune_assets.service_urls import DATABASE_URL_ENV, check_database_url, connecting, env_value
from finetune_assets.store.engine import EngineOptions
from finetune_assets.store.platform import PlatformStore


class StoreResource(dg.ConfigurableResource):
    """The SQL store. `database_url` comes from `DATABASE_URL` (an `EnvVar`); unset, a SQLite file is used."""

    database_url: str | None = None
    posts_table: str = "generated_posts"
    state_dir: str = ".state"
    pool_size: int = Field(default=5, ge=1, description="Postgres: connections kept in the pool per process.")
    max_overflow: int = Field(default=5, ge=0, description="Postgres: extra connections opened under load.")
    statement_timeout_s: float = Field(
        default=300.0, ge=0, description="Postgres: the session's statement_timeout in seconds (0: none)."
    )

    def url(self) -> str:
        """`database_url` (checked: a bad one is one `ServiceUrlError` line), else the state dir's SQLite file."""
        url = env_value(self.database_url)
        if url:
            return check_database_url(url)
        path = Path(self.state_dir)
        path.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path / 'finetune.db'}"

    def get(self) -> PlatformStore:
        options = EngineOptions(
            pool_size=self.pool_size, max_overflow=self.max_overflow, statement_timeout_s=self.statement_timeout_s
        )
        url = self.url()
        with connecting(url, variable=DATABASE_URL_ENV if env_value(self.database_url) else None):
            return _store_for(url, self.posts_table, options)  # connects: the schema is checked


@lru_cache(maxsize=8)
def _store_for(url: str, posts_table_name: str, options: EngineOptions | None = None) -> PlatformStore:
    """One engine (and pool) per process and database, as SQLAlchemy intends."""
    return PlatformStore.from_url(url, posts_table_name, options)
