"""Promotions: the routing decision taken for each experiment, and so the model in production."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from finetune_assets.store.base import Queries
from finetune_assets.store.records import PromotionRecord, utcnow
from finetune_assets.store.schema import promotions


def read_production_model(conn: Connection, default: str) -> str:
    """The model the app should call now: the last promoted one, or `default` (the configured base model).
    The one definition of it, read by the store and by the content app's router."""
    query = (
        sa.select(promotions.c.model_id)
        .where(promotions.c.promoted.is_(True))
        .order_by(promotions.c.promotion_id.desc())
        .limit(1)
    )
    model_id = conn.execute(query).scalar()
    return str(model_id) if model_id else default


class PromotionQueries(Queries):
    def record_promotion(
        self,
        *,
        experiment_id: str,
        model_id: str,
        previous_model_id: str,
        registry_version: str | None,
        promoted: bool,
    ) -> None:
        """Idempotent per experiment: a retried promotion updates its row instead of adding one."""
        values = {
            "model_id": model_id,
            "previous_model_id": previous_model_id,
            "registry_version": registry_version,
            "promoted": promoted,
        }
        with self.engine.begin() as conn:
            updated = conn.execute(
                promotions.update().where(promotions.c.experiment_id == experiment_id).values(**values)
            ).rowcount
            if not updated:
                conn.execute(promotions.insert().values(experiment_id=experiment_id, created_at=utcnow(), **values))

    def promotion_of(self, experiment_id: str) -> PromotionRecord | None:
        """The routing decision recorded for an experiment (promoted or kept), if any."""
        return self._first(
            sa.select(promotions).where(promotions.c.experiment_id == experiment_id), PromotionRecord.from_row
        )

    def production_model(self, default: str) -> str:
        with self.engine.connect() as conn:
            return read_production_model(conn, default)
