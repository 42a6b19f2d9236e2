"""Experiments: one runs at a time; its row carries the phase, the window, the monitor's state and the decision."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.store.base import Queries, first_row
from finetune_assets.store.records import ExperimentRecord, as_utc, utcnow
from finetune_assets.store.schema import experiments, promotions


class ExperimentAlreadyRunning(FinetuneAssetsError, RuntimeError):
    def __init__(self, experiment_id: str, ends_at: datetime) -> None:
        super().__init__(
            f"experiment {experiment_id} is still running until {ends_at:%Y-%m-%d %H:%M} UTC; "
            "only one experiment runs at a time, so this candidate waits"
        )
        self.experiment_id = experiment_id
        self.ends_at = ends_at


def read_running_experiment(conn: Connection) -> ExperimentRecord | None:
    """The running experiment (the oldest, were there ever several), or None. The one definition of it, read
    by the store (sensors, lifecycle) and by the content app's router."""
    query = sa.select(experiments).where(experiments.c.status == "running").order_by(experiments.c.started_at)
    row = first_row(conn, query)
    return ExperimentRecord.from_row(row) if row is not None else None


class ExperimentQueries(Queries):
    def running_experiment(self) -> ExperimentRecord | None:
        with self.engine.connect() as conn:
            return read_running_experiment(conn)

    def start_experiment(
        self,
        *,
        experiment_id: str,
        partition_key: str,
        control_model: str,
        treatment_model: str,
        salt: str,
        split: float,
        coverage: float,
        started_at: datetime,
        ends_at: datetime,
    ) -> ExperimentRecord:
        """Insert a running experiment; refuses a second one (only one experiment runs at a time)."""
        with self.engine.begin() as conn:
            running = conn.execute(
                sa.select(experiments.c.experiment_id, experiments.c.ends_at).where(experiments.c.status == "running")
            ).first()
            if running is not None:
                raise ExperimentAlreadyRunning(running[0], as_utc(running[1]))
            conn.execute(
                experiments.insert().values(
                    experiment_id=experiment_id,
                    partition_key=partition_key,
                    control_model=control_model,
                    treatment_model=treatment_model,
                    salt=salt,
                    split=split,
                    coverage=coverage,
                    started_at=started_at,
                    ends_at=ends_at,
                    status="running",
                    details={},
                )
            )
        experiment = self.get_experiment(experiment_id)
        assert experiment is not None
        return experiment

    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None:
        return self._first(
            sa.select(experiments).where(experiments.c.experiment_id == experiment_id), ExperimentRecord.from_row
        )

    def latest_experiment(self, partition_key: str | None = None) -> ExperimentRecord | None:
        query = sa.select(experiments).order_by(experiments.c.started_at.desc())
        if partition_key is not None:
            query = query.where(experiments.c.partition_key == partition_key)
        return self._first(query, ExperimentRecord.from_row)

    def experiment_of(self, model_id: str) -> ExperimentRecord | None:
        """The newest experiment that served `model_id` as the treatment."""
        query = (
            sa.select(experiments)
            .where(experiments.c.treatment_model == model_id)
            .order_by(experiments.c.started_at.desc())
        )
        return self._first(query, ExperimentRecord.from_row)

    def decide_experiment(
        self, experiment_id: str, *, status: str, decision: str, reason: str, details: Mapping[str, Any]
    ) -> bool:
        """Record the decision once: only a running experiment is decided. False when it already was (a retried
        decision run), so the first decision stands and what was promoted on it stays true."""
        with self.engine.begin() as conn:
            decided = conn.execute(
                experiments.update()
                .where(experiments.c.experiment_id == experiment_id, experiments.c.status == "running")
                .values(
                    status=status,
                    decision=decision,
                    reason=reason,
                    decided_at=utcnow(),
                    details={**_details(conn, experiment_id), **json.loads(json.dumps(details))},
                )
            ).rowcount
        return bool(decided)

    def decided_without_promotion(self) -> list[ExperimentRecord]:
        """Experiments decided `decided` (valid) whose promotion was never recorded, oldest first: a decision run
        that stopped between the decision and the routing write. `invalid` ones promote nothing, and one that a
        later promotion overtook is history: finishing it now would roll production back."""
        query = (
            sa.select(experiments)
            .where(
                experiments.c.status == "decided",
                ~sa.exists().where(promotions.c.experiment_id == experiments.c.experiment_id),
                ~sa.exists().where(promotions.c.created_at >= experiments.c.decided_at),
            )
            .order_by(experiments.c.decided_at)
        )
        return self._all(query, ExperimentRecord.from_row)

    def set_coverage(self, experiment_id: str, coverage: float) -> None:
        """Ramp a running experiment's coverage (validated by the caller: only up, within a phase)."""
        with self.engine.begin() as conn:
            conn.execute(
                experiments.update()
                .where(experiments.c.experiment_id == experiment_id, experiments.c.status == "running")
                .values(coverage=coverage)
            )

    def annotate_experiment(self, experiment_id: str, **details: Any) -> None:
        """Merge facts about the experiment (e.g. where its traffic came from) into its details."""
        with self.engine.begin() as conn:
            conn.execute(
                experiments.update()
                .where(experiments.c.experiment_id == experiment_id)
                .values(details={**_details(conn, experiment_id), **details})
            )


def _details(conn: Connection, experiment_id: str) -> dict[str, Any]:
    """The details JSON as stored, to merge new facts into in the same transaction."""
    current = conn.execute(sa.select(experiments.c.details).where(experiments.c.experiment_id == experiment_id))
    return dict(current.scalar() or {})
