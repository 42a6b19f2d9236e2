"""What every area of the store shares: its engine and the read of one row or all rows as records."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

R = TypeVar("R")
Row = Mapping[str, Any]
"""A result row by column name (SQLAlchemy's RowMapping, whose keys are column names here)."""


def first_row(conn: Connection, query: sa.Select[Any]) -> Row | None:
    """The query's first row, or None."""
    return cast(Row | None, conn.execute(query.limit(1)).mappings().first())


class Queries:
    """One area's queries over the store's engine and the app's posts table (no Dagster: the content app's
    router imports the store). Every area takes the same two, so `PlatformStore` is all of them at once."""

    def __init__(self, engine: Engine, posts: sa.Table) -> None:
        self.engine = engine
        self.posts = posts

    def _first(self, query: sa.Select[Any], parse: Callable[[Row], R]) -> R | None:
        """The query's first row as a record, or None."""
        with self.engine.connect() as conn:
            row = first_row(conn, query)
        return parse(row) if row is not None else None

    def _all(self, query: sa.Select[Any], parse: Callable[[Row], R]) -> list[R]:
        with self.engine.connect() as conn:
            return [parse(cast(Row, row)) for row in conn.execute(query).mappings()]
