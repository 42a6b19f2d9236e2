"""Fine-tuned models: one row per job, whether it succeeded or not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from finetune_assets.store.base import Queries
from finetune_assets.store.records import ModelRecord, utcnow
from finetune_assets.store.schema import datasets, models


class ModelQueries(Queries):
    def record_model(
        self,
        *,
        model_id: str,
        partition_key: str,
        dataset_id: str,
        backend: str,
        base_model: str,
        job_id: str,
        status: str,
        details: Mapping[str, Any],
    ) -> None:
        """Insert or update the job's row; a success marks its dataset trained (its posts are spent)."""
        values = {
            "model_id": model_id,
            "partition_key": partition_key,
            "dataset_id": dataset_id,
            "backend": backend,
            "base_model": base_model,
            "job_id": job_id,
            "status": status,
            "details": dict(details),
        }
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(models.c.model_id).where(models.c.model_id == model_id)).first()
            if exists:
                conn.execute(models.update().where(models.c.model_id == model_id).values(**values))
            else:
                conn.execute(models.insert().values(created_at=utcnow(), **values))
            if status == "succeeded":
                conn.execute(datasets.update().where(datasets.c.dataset_id == dataset_id).values(status="trained"))

    def latest_model(self, partition_key: str) -> ModelRecord | None:
        query = sa.select(models).where(models.c.partition_key == partition_key).order_by(models.c.created_at.desc())
        return self._first(query, ModelRecord.from_row)

    def get_model(self, model_id: str) -> ModelRecord | None:
        return self._first(sa.select(models).where(models.c.model_id == model_id), ModelRecord.from_row)

    def recent_models(self, limit: int = 5) -> list[ModelRecord]:
        """The newest fine-tuned models of any cycle, newest first."""
        return self._all(sa.select(models).order_by(models.c.created_at.desc()).limit(limit), ModelRecord.from_row)
