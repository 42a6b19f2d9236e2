"""The content app's posts (read only, but for the demo's and tests' writes): the pool a collection draws
from, the candidates it streams, and what the predictor and the demo base model learn from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from finetune_assets.store.base import Queries
from finetune_assets.store.records import PoolCounts
from finetune_assets.store.schema import engagement_rate, ledger


class PostQueries(Queries):
    def create_posts_table(self) -> None:
        """Only the demo and tests create the app's table; in production the app owns it."""
        self.posts.create(self.engine, checkfirst=True)

    def insert_posts(self, rows: Iterable[Mapping[str, Any]], chunk_size: int = 2000) -> int:
        total = 0
        chunk: list[Mapping[str, Any]] = []
        with self.engine.begin() as conn:
            for row in rows:
                chunk.append(row)
                if len(chunk) >= chunk_size:
                    conn.execute(self.posts.insert(), chunk)
                    total += len(chunk)
                    chunk = []
            if chunk:
                conn.execute(self.posts.insert(), chunk)
                total += len(chunk)
        return total

    def has_posts_table(self) -> bool:
        """False until the app (or the demo) has created its table in this database."""
        return sa.inspect(self.engine).has_table(self.posts.name)

    def max_post_id(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(self.posts.c.post_id))).scalar() or 0)

    def _unused_organic(self) -> sa.ColumnElement[bool]:
        """Organic posts with no ledger row. The ledger only ever holds rows of live datasets: a dataset that is
        rejected or superseded deletes its rows in the same transaction (`reject_dataset`, `release_partition`),
        so a primary-key probe of the ledger is enough — no join to the datasets on the sensor's hot path."""
        taken = sa.select(ledger.c.post_id).where(ledger.c.post_id == self.posts.c.post_id)
        return sa.and_(self.posts.c.experiment_id.is_(None), ~sa.exists(taken))

    def _rate_below(self, engagement_threshold: float) -> sa.ColumnElement[bool]:
        return engagement_rate(self.posts.c) < sa.cast(sa.literal(engagement_threshold), sa.Float)

    def _qualifying(self, min_impressions: int, engagement_threshold: float) -> sa.ColumnElement[bool]:
        p = self.posts.c
        rate_ok = engagement_rate(p) >= sa.cast(sa.literal(engagement_threshold), sa.Float)
        return sa.and_(p.impressions >= min_impressions, rate_ok)

    def pool_counts(
        self, min_impressions: int, engagement_threshold: float, conn: Connection | None = None
    ) -> PoolCounts:
        """One aggregate query over untaken organic posts (A/B traffic never trains)."""
        p = self.posts.c
        qualifying = self._qualifying(min_impressions, engagement_threshold)
        query = sa.select(
            sa.func.count(),
            sa.func.sum(sa.case((p.impressions < min_impressions, 1), else_=0)),
            sa.func.sum(
                sa.case(
                    (
                        sa.and_(p.impressions >= min_impressions, self._rate_below(engagement_threshold)),
                        1,
                    ),
                    else_=0,
                )
            ),
            sa.func.sum(sa.case((qualifying, 1), else_=0)),
            sa.func.max(sa.case((qualifying, p.post_id), else_=None)),
        ).where(self._unused_organic())
        if conn is not None:
            row = conn.execute(query).one()
        else:
            with self.engine.connect() as own:
                row = own.execute(query).one()
        return PoolCounts(
            unused_posts=int(row[0] or 0),
            below_min_impressions=int(row[1] or 0),
            below_engagement_threshold=int(row[2] or 0),
            qualifying=int(row[3] or 0),
            max_qualifying_post_id=int(row[4]) if row[4] is not None else None,
        )

    def engagement_rate_bins(
        self, min_impressions: int, bins_per_unit: int, conn: Connection | None = None
    ) -> dict[int, int]:
        """Histogram of the untaken organic posts' engagement rates, counted in SQL: bin `k` holds the rates in
        [k / bins_per_unit, (k + 1) / bins_per_unit). Posts with too few impressions or inconsistent counts
        are left out (their rate means nothing)."""
        p = self.posts.c
        # Integer division on both SQLite and Postgres (non-negative operands, so it truncates like floor).
        bin_index = ((p.engagements * bins_per_unit) // p.impressions).label("bin")
        query = (
            sa.select(bin_index, sa.func.count())
            .where(
                self._unused_organic(),
                p.impressions >= max(min_impressions, 1),
                p.engagements >= 0,
                p.engagements <= p.impressions,
            )
            .group_by(bin_index)
        )
        if conn is not None:
            rows = conn.execute(query).all()
        else:
            with self.engine.connect() as own:
                rows = own.execute(query).all()
        return {int(k): int(n) for k, n in rows}

    def count_qualifying(self, min_impressions: int, engagement_threshold: float) -> tuple[int, int | None]:
        """Cheap sensor query: how many untaken qualifying posts wait, and the newest one's id."""
        p = self.posts.c
        query = sa.select(sa.func.count(), sa.func.max(p.post_id)).where(
            self._unused_organic(), self._qualifying(min_impressions, engagement_threshold)
        )
        with self.engine.connect() as conn:
            count, newest = conn.execute(query).one()
        return int(count or 0), (int(newest) if newest is not None else None)

    def candidate_posts_query(self, min_impressions: int, engagement_threshold: float) -> sa.Select[Any]:
        """The untaken qualifying organic posts, whole rows in post_id order: what a collection reads."""
        return (
            sa.select(self.posts)
            .where(self._unused_organic(), self._qualifying(min_impressions, engagement_threshold))
            .order_by(self.posts.c.post_id)
        )

    def iter_candidate_posts(
        self, conn: Connection, min_impressions: int, engagement_threshold: float, chunk_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Stream untaken qualifying organic posts in post_id order, `chunk_size` rows at a time.

        Two steps: the ids stream from an index-only range scan of `ix_<table>_organic_rate` (the filter needs
        only what it carries), then each chunk's rows are read by primary key: only candidates' rows are read,
        and the sort is of ids, not of whole rows."""
        p = self.posts.c
        ids = self.candidate_posts_query(min_impressions, engagement_threshold).with_only_columns(p.post_id)
        if conn.dialect.name == "postgresql":
            # A cursor is planned for its first rows (cursor_tuple_fraction 0.1): a primary-key walk that reads
            # the heap. All ids are read, so plan for all of them: the index-only range scan, then a sort.
            conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
        # Per statement: Connection.execution_options() would switch every later statement to a server cursor.
        stream = conn.execute(ids.execution_options(stream_results=True, yield_per=chunk_size))
        for chunk in stream.partitions():
            rows = sa.select(self.posts).where(p.post_id.in_([post_id for (post_id,) in chunk])).order_by(p.post_id)
            for row in conn.execute(rows).mappings():
                yield dict(row)

    def history_for_predictor(self, min_impressions: int, limit: int = 20000) -> list[tuple[str, int, int]]:
        """Recent organic posts with sound counts, never a holdout post: the predictor's training data."""
        p = self.posts.c
        holdout = sa.select(ledger.c.post_id).where(ledger.c.post_id == p.post_id, ledger.c.role == "holdout")
        query = (
            sa.select(p.completion, p.impressions, p.engagements)
            .where(
                p.experiment_id.is_(None),
                p.completion.is_not(None),
                p.impressions >= min_impressions,
                p.engagements >= 0,
                p.engagements <= p.impressions,
                ~sa.exists(holdout),
            )
            .order_by(p.post_id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(str(c), int(i), int(e)) for c, i, e in conn.execute(query)]

    def pretraining_posts(
        self, min_impressions: int, engagement_threshold: float, limit: int = 20000
    ) -> list[tuple[str, str]]:
        """Organic posts that can never be training or evaluation examples (they do not qualify):
        the demo base model learns the language from them, so evaluation never scores memorized posts."""
        p = self.posts.c
        query = (
            sa.select(p.prompt_messages, p.completion)
            .where(
                p.experiment_id.is_(None),
                p.completion.is_not(None),
                ~self._qualifying(min_impressions, engagement_threshold),
            )
            .order_by(p.post_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(str(a), str(b)) for a, b in conn.execute(query) if a and b]
