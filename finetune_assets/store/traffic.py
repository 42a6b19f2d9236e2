"""A/B sums: per-user engagement and impression totals, summed per arm in SQL (no impression row reaches
Python), for the experiment's analysis and the pre-launch traffic forecast."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from finetune_assets.store.base import Queries
from finetune_assets.store.records import ArmTotals
from finetune_assets.store.schema import INDEX_ORDER_PLAN_OFF


class TrafficQueries(Queries):
    def _per_user_totals(
        self, where: sa.ColumnElement[bool], by_variant: bool, index_order: bool = False
    ) -> dict[str, ArmTotals]:
        """Per-user sums, then sums of them (per variant, or one row keyed ""), all in SQL.

        `index_order`: on Postgres, read the covering experiment index in (variant, user) order and aggregate as
        it streams (GroupAggregate), instead of hashing every user of a big experiment in memory; the planner
        settings are local to this read-only transaction (bench/p4_outcome_analysis.py measures both plans).
        """
        p = self.posts.c
        valid = sa.and_(p.impressions >= 0, p.engagements >= 0, p.engagements <= p.impressions, where)
        group = sa.literal("") if not by_variant else p.variant
        per_user = (
            sa.select(
                group.label("variant"),
                sa.cast(sa.func.sum(p.engagements), sa.Float).label("m"),
                sa.cast(sa.func.sum(p.impressions), sa.Float).label("d"),
            )
            .where(valid)
            .group_by(*((p.variant,) if by_variant else ()), p.user_id)
            .subquery()
        )
        m, d = per_user.c.m, per_user.c.d
        query = sa.select(
            per_user.c.variant,
            sa.func.count(),
            sa.func.sum(m),
            sa.func.sum(d),
            sa.func.sum(m * m),
            sa.func.sum(d * d),
            sa.func.sum(m * d),
        ).group_by(per_user.c.variant)
        with self.engine.connect() as conn:
            if index_order and conn.dialect.name == "postgresql":
                for setting in INDEX_ORDER_PLAN_OFF:
                    conn.execute(sa.text(f"SET LOCAL {setting} = off"))
            return {
                row[0]: ArmTotals(row[0], int(row[1]), *(float(v or 0.0) for v in row[2:]))
                for row in conn.execute(query)
                if row[1]
            }

    def arm_totals(self, experiment_id: str, until: datetime | None = None) -> dict[str, ArmTotals]:
        """Per-user sums, then per-arm sums of them, all in SQL: no impression row reaches Python.

        `until` (exclusive) restricts them to the posts created before it: the experiment as it stood then.
        """
        p = self.posts.c
        where = p.experiment_id == experiment_id
        if until is not None:
            where = sa.and_(where, p.created_at < until)
        return self._per_user_totals(where, by_variant=True, index_order=True)

    def traffic_history(self, since: datetime, until: datetime) -> ArmTotals | None:
        """Every user's sums over the posts created in [since, until): the traffic forecast of the power gate."""
        p = self.posts.c
        return self._per_user_totals(sa.and_(p.created_at >= since, p.created_at < until), by_variant=False).get("")
