"""The SQL store: the app's `generated_posts` (read only) and the platform's own tables.

One SQLAlchemy Core code path serves the embedded SQLite file and production Postgres. The store is the
source of truth for everything that must survive a crash: the example ledger (which post trained which
model), datasets and their validation outcome, models, evaluations, experiments and promotions.
Aggregations are pushed into SQL and large reads stream in chunks.

`PlatformStore` is the one entry point; each area's queries live in their own module (`posts`, `datasets`,
`models`, `evaluations`, `experiments`, `traffic`, `promotions`, `uploads`) and hand out the typed records
of `records`. The methods below only delegate, so every caller reads one flat API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finetune_assets.finetuning.base import ChatExample
from finetune_assets.store.datasets import DatasetQueries
from finetune_assets.store.engine import EngineOptions, make_engine
from finetune_assets.store.evaluations import EvaluationQueries
from finetune_assets.store.experiments import ExperimentAlreadyRunning, ExperimentQueries
from finetune_assets.store.migrate import ensure_schema
from finetune_assets.store.models import ModelQueries
from finetune_assets.store.posts import PostQueries
from finetune_assets.store.promotions import PromotionQueries
from finetune_assets.store.records import (
    ArmTotals,
    DatasetRecord,
    EvaluationRecord,
    ExperimentRecord,
    ModelRecord,
    PoolCounts,
    PromotionRecord,
)
from finetune_assets.store.schema import DATASET_ACTIVE, posts_table
from finetune_assets.store.traffic import TrafficQueries
from finetune_assets.store.uploads import UploadQueries

__all__ = ["ArmTotals", "ExperimentAlreadyRunning", "PlatformStore", "PoolCounts"]

T = TypeVar("T")


class PlatformStore:
    """Typed access to the posts table and the platform tables. Creates its tables on first use."""

    def __init__(self, engine: Engine, posts_table_name: str = "generated_posts") -> None:
        self.engine = engine
        self.posts = posts_table(posts_table_name)
        ensure_schema(engine)
        self._posts = PostQueries(engine, self.posts)
        self._datasets = DatasetQueries(engine, self.posts)
        self._models = ModelQueries(engine)
        self._evaluations = EvaluationQueries(engine)
        self._experiments = ExperimentQueries(engine)
        self._traffic = TrafficQueries(engine, self.posts)
        self._promotions = PromotionQueries(engine)
        self._uploads = UploadQueries(engine)

    @classmethod
    def from_url(
        cls, url: str, posts_table_name: str = "generated_posts", options: EngineOptions | None = None
    ) -> PlatformStore:
        return cls(make_engine(url, options), posts_table_name)

    def retrying_transaction(
        self,
        work: Callable[[Connection], T],
        *,
        what: str,
        attempts: int = 3,
        backoff_s: float = 0.5,
        log: Callable[[str], object] | None = None,
    ) -> T:
        """Run `work` in one transaction; if the connection is lost (server restarted, backend terminated, a
        proxy cut it), the transaction is rolled back and `work` runs again on a fresh connection, at most
        `attempts` times in all. `work` must read everything it writes from the database inside the
        transaction, so a retry sees the same rows and commits all or nothing, once. Only lost connections are
        retried: a failing statement, a constraint or a statement timeout is raised at once."""
        for attempt in range(1, attempts + 1):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except sa.exc.DBAPIError as exc:
                if not exc.connection_invalidated or attempt >= attempts:
                    raise
                delay = backoff_s * 2 ** (attempt - 1)
                cause = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
                if log is not None:
                    log(
                        f"{what}: database connection lost ({cause}); the transaction was rolled back, "
                        f"retrying in {delay:.1f} s (attempt {attempt + 1} of {attempts})"
                    )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the app's posts (posts.py) ------------------------------------------------------------------------

    def create_posts_table(self) -> None:
        self._posts.create_posts_table()

    def insert_posts(self, rows: Iterable[Mapping[str, Any]], chunk_size: int = 2000) -> int:
        return self._posts.insert_posts(rows, chunk_size)

    def has_posts_table(self) -> bool:
        return self._posts.has_posts_table()

    def max_post_id(self) -> int:
        return self._posts.max_post_id()

    def pool_counts(
        self, min_impressions: int, engagement_threshold: float, conn: Connection | None = None
    ) -> PoolCounts:
        return self._posts.pool_counts(min_impressions, engagement_threshold, conn)

    def engagement_rate_bins(
        self, min_impressions: int, bins_per_unit: int, conn: Connection | None = None
    ) -> dict[int, int]:
        return self._posts.engagement_rate_bins(min_impressions, bins_per_unit, conn)

    def count_qualifying(self, min_impressions: int, engagement_threshold: float) -> tuple[int, int | None]:
        return self._posts.count_qualifying(min_impressions, engagement_threshold)

    def candidate_posts_query(self, min_impressions: int, engagement_threshold: float) -> sa.Select[Any]:
        return self._posts.candidate_posts_query(min_impressions, engagement_threshold)

    def iter_candidate_posts(
        self, conn: Connection, min_impressions: int, engagement_threshold: float, chunk_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        return self._posts.iter_candidate_posts(conn, min_impressions, engagement_threshold, chunk_size)

    def history_for_predictor(self, min_impressions: int, limit: int = 20000) -> list[tuple[str, int, int]]:
        return self._posts.history_for_predictor(min_impressions, limit)

    def pretraining_posts(
        self, min_impressions: int, engagement_threshold: float, limit: int = 20000
    ) -> list[tuple[str, str]]:
        return self._posts.pretraining_posts(min_impressions, engagement_threshold, limit)

    # -- datasets and the ledger (datasets.py) -------------------------------------------------------------

    def release_partition(self, conn: Connection, partition_key: str) -> int:
        return self._datasets.release_partition(conn, partition_key)

    def record_dataset(
        self,
        conn: Connection,
        *,
        partition_key: str,
        dataset_hash: str,
        train: Sequence[tuple[int, str]],
        holdout: Sequence[tuple[int, str]],
        rejected: Sequence[tuple[int, str]],
        details: Mapping[str, Any],
    ) -> str:
        return self._datasets.record_dataset(
            conn,
            partition_key=partition_key,
            dataset_hash=dataset_hash,
            train=train,
            holdout=holdout,
            rejected=rejected,
            details=details,
        )

    def set_dataset_status(self, dataset_id: str, status: str, conn: Connection | None = None) -> None:
        self._datasets.set_dataset_status(dataset_id, status, conn)

    def reject_dataset(self, dataset_id: str, conn: Connection) -> None:
        self._datasets.reject_dataset(dataset_id, conn)

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        return self._datasets.get_dataset(dataset_id)

    def latest_dataset(self, partition_key: str, statuses: Sequence[str] = DATASET_ACTIVE) -> DatasetRecord | None:
        return self._datasets.latest_dataset(partition_key, statuses)

    def load_examples(self, dataset_id: str, role: str) -> list[ChatExample]:
        return self._datasets.load_examples(dataset_id, role)

    def ledger_posts(self, dataset_id: str, role: str | None = None) -> list[tuple[int, str, str | None]]:
        return self._datasets.ledger_posts(dataset_id, role)

    def trained_hashes_among(self, conn: Connection, hashes: Sequence[str]) -> frozenset[str]:
        return self._datasets.trained_hashes_among(conn, hashes)

    # -- models (models.py) and evaluations (evaluations.py) -----------------------------------------------

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
        self._models.record_model(
            model_id=model_id,
            partition_key=partition_key,
            dataset_id=dataset_id,
            backend=backend,
            base_model=base_model,
            job_id=job_id,
            status=status,
            details=details,
        )

    def latest_model(self, partition_key: str) -> ModelRecord | None:
        return self._models.latest_model(partition_key)

    def get_model(self, model_id: str) -> ModelRecord | None:
        return self._models.get_model(model_id)

    def recent_models(self, limit: int = 5) -> list[ModelRecord]:
        return self._models.recent_models(limit)

    def record_evaluation(
        self, *, partition_key: str, candidate: str, champion: str, passed: bool, scores: Mapping[str, Any]
    ) -> str:
        return self._evaluations.record_evaluation(
            partition_key=partition_key, candidate=candidate, champion=champion, passed=passed, scores=scores
        )

    def evaluation_of(self, model_id: str) -> EvaluationRecord | None:
        return self._evaluations.evaluation_of(model_id)

    def latest_evaluation(self, partition_key: str) -> EvaluationRecord | None:
        return self._evaluations.latest_evaluation(partition_key)

    def waiting_candidate(self) -> EvaluationRecord | None:
        return self._evaluations.waiting_candidate()

    # -- experiments (experiments.py) and their A/B sums (traffic.py) --------------------------------------

    def running_experiment(self) -> ExperimentRecord | None:
        return self._experiments.running_experiment()

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
        return self._experiments.start_experiment(
            experiment_id=experiment_id,
            partition_key=partition_key,
            control_model=control_model,
            treatment_model=treatment_model,
            salt=salt,
            split=split,
            coverage=coverage,
            started_at=started_at,
            ends_at=ends_at,
        )

    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None:
        return self._experiments.get_experiment(experiment_id)

    def latest_experiment(self, partition_key: str | None = None) -> ExperimentRecord | None:
        return self._experiments.latest_experiment(partition_key)

    def experiment_of(self, model_id: str) -> ExperimentRecord | None:
        return self._experiments.experiment_of(model_id)

    def decide_experiment(
        self, experiment_id: str, *, status: str, decision: str, reason: str, details: Mapping[str, Any]
    ) -> bool:
        return self._experiments.decide_experiment(
            experiment_id, status=status, decision=decision, reason=reason, details=details
        )

    def decided_without_promotion(self) -> list[ExperimentRecord]:
        return self._experiments.decided_without_promotion()

    def set_coverage(self, experiment_id: str, coverage: float) -> None:
        self._experiments.set_coverage(experiment_id, coverage)

    def annotate_experiment(self, experiment_id: str, **details: Any) -> None:
        self._experiments.annotate_experiment(experiment_id, **details)

    def arm_totals(self, experiment_id: str, until: datetime | None = None) -> dict[str, ArmTotals]:
        return self._traffic.arm_totals(experiment_id, until)

    def traffic_history(self, since: datetime, until: datetime) -> ArmTotals | None:
        return self._traffic.traffic_history(since, until)

    # -- promotions (promotions.py) ------------------------------------------------------------------------

    def record_promotion(
        self,
        *,
        experiment_id: str,
        model_id: str,
        previous_model_id: str,
        registry_version: str | None,
        promoted: bool,
    ) -> None:
        self._promotions.record_promotion(
            experiment_id=experiment_id,
            model_id=model_id,
            previous_model_id=previous_model_id,
            registry_version=registry_version,
            promoted=promoted,
        )

    def promotion_of(self, experiment_id: str) -> PromotionRecord | None:
        return self._promotions.promotion_of(experiment_id)

    def production_model(self, default: str) -> str:
        return self._promotions.production_model(default)

    # -- files uploaded to a fine-tuning API (uploads.py) --------------------------------------------------

    def uploaded_file(self, endpoint: str, sha256: str) -> str | None:
        return self._uploads.uploaded_file(endpoint, sha256)

    def remember_upload(
        self, *, endpoint: str, sha256: str, file_id: str, purpose: str, n_bytes: int, filename: str
    ) -> None:
        self._uploads.remember_upload(
            endpoint=endpoint, sha256=sha256, file_id=file_id, purpose=purpose, n_bytes=n_bytes, filename=filename
        )
