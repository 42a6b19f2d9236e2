"""Evaluations: each candidate scored against the model in production on prompts neither trained on."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from finetune_assets.store.base import Queries
from finetune_assets.store.records import EvaluationRecord, utcnow
from finetune_assets.store.schema import evaluations, experiments


class EvaluationQueries(Queries):
    def record_evaluation(
        self, *, partition_key: str, candidate: str, champion: str, passed: bool, scores: Mapping[str, Any]
    ) -> str:
        evaluation_id = f"ev-{uuid.uuid4().hex[:12]}"
        with self.engine.begin() as conn:
            conn.execute(
                evaluations.insert().values(
                    evaluation_id=evaluation_id,
                    partition_key=partition_key,
                    candidate_model=candidate,
                    champion_model=champion,
                    passed=passed,
                    created_at=utcnow(),
                    scores=json.loads(json.dumps(scores)),
                )
            )
        return evaluation_id

    def evaluation_of(self, model_id: str) -> EvaluationRecord | None:
        """The newest evaluation of `model_id` as the candidate."""
        query = (
            sa.select(evaluations)
            .where(evaluations.c.candidate_model == model_id)
            .order_by(evaluations.c.created_at.desc())
        )
        return self._first(query, EvaluationRecord.from_row)

    def latest_evaluation(self, partition_key: str) -> EvaluationRecord | None:
        query = (
            sa.select(evaluations)
            .where(evaluations.c.partition_key == partition_key)
            .order_by(evaluations.c.created_at.desc())
        )
        return self._first(query, EvaluationRecord.from_row)

    def waiting_candidate(self) -> EvaluationRecord | None:
        """The newest candidate that passed evaluation but has not had its experiment yet (it waited for one
        that was running), or None. Older passed candidates are superseded by a newer one."""
        evaluation = self._first(
            sa.select(evaluations).where(evaluations.c.passed.is_(True)).order_by(evaluations.c.created_at.desc()),
            EvaluationRecord.from_row,
        )
        if evaluation is None:
            return None
        tested = sa.select(experiments.c.experiment_id).where(
            experiments.c.treatment_model == evaluation.candidate_model,
            experiments.c.partition_key == evaluation.partition_key,
        )
        with self.engine.connect() as conn:
            return None if conn.execute(tested.limit(1)).first() else evaluation
