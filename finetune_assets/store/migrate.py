"""Bring a database's platform tables to the schema this release expects."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from finetune_assets.store.schema import metadata


def ensure_schema(engine: Engine) -> None:
    """Called by every store on start."""
    metadata.create_all(engine, checkfirst=True)
