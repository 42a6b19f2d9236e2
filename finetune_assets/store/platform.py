"""The SQL store: the app's `generated_posts` (read only) and the platform's own tables.

One SQLAlchemy Core code path serves the embedded SQLite file and production Postgres. The store is the
source of truth for everything that must survive a crash: the example ledger (which post trained which
model), datasets and their validation outcome, models, evaluations, experiments and promotions.
Aggregations are pushed into SQL and large reads stream in chunks.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.finetuning.base import ChatExample
from finetune_assets.store.engine import EngineOptions, make_engine
from finetune_assets.store.migrate import ensure_schema
from finetune_assets.store.schema import (
    DATASET_ACTIVE,
    INDEX_ORDER_PLAN_OFF,
    datasets,
    engagement_rate,
    evaluations,
    experiments,
    ledger,
    models,
    posts_table,
    promotions,
    uploaded_files,
)

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes: every value the store hands out is aware UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(mapping: Any) -> dict[str, Any]:
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in mapping.items()}


@dataclass(frozen=True)
class PoolCounts:
    """The funnel of organic posts not yet taken by a dataset: what qualifies and why the rest does not."""

    unused_posts: int
    below_min_impressions: int
    below_engagement_threshold: int
    qualifying: int
    max_qualifying_post_id: int | None


@dataclass(frozen=True)
class ArmTotals:
    """Per-arm sums of per-user engagements (M) and impressions (D), as the delta method needs them."""

    variant: str
    users: int
    sum_m: float
    sum_d: float
    sum_m2: float
    sum_d2: float
    sum_md: float


class PlatformStore:
    """Typed access to the posts table and the platform tables. Creates its tables on first use."""

    def __init__(self, engine: Engine, posts_table_name: str = "generated_posts") -> None:
        self.engine = engine
        self.posts = posts_table(posts_table_name)
        ensure_schema(engine)

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

    def _first(self, query: sa.Select[Any]) -> dict[str, Any] | None:
        """The query's first row as a plain dict with aware UTC datetimes, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(query.limit(1)).mappings().first()
        return _row(row) if row else None

    # -- the app's posts ---------------------------------------------------------------------------------

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

    def trained_hashes_among(self, conn: Connection, hashes: Sequence[str]) -> frozenset[str]:
        """Which of `hashes` an example already trained on has: one indexed lookup per 1,000 hashes, so memory
        stays bounded by the batch, not by the training history."""
        found: set[str] = set()
        unique = sorted(set(hashes))
        for start in range(0, len(unique), 1000):
            query = (
                sa.select(ledger.c.content_hash)
                .join(datasets, datasets.c.dataset_id == ledger.c.dataset_id)
                .where(
                    ledger.c.content_hash.in_(unique[start : start + 1000]),
                    ledger.c.role == "train",
                    datasets.c.status == "trained",
                )
            )
            found.update(h for (h,) in conn.execute(query))
        return frozenset(found)

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

    # -- datasets and the ledger ---------------------------------------------------------------------------

    def release_partition(self, conn: Connection, partition_key: str) -> int:
        """Supersede this partition's untrained datasets so a rematerialization re-collects their posts."""
        stale = [
            d
            for (d,) in conn.execute(
                sa.select(datasets.c.dataset_id).where(
                    datasets.c.partition_key == partition_key,
                    datasets.c.status.in_(("collected", "validated")),
                )
            )
        ]
        if stale:
            conn.execute(ledger.delete().where(ledger.c.dataset_id.in_(stale)))
            conn.execute(datasets.update().where(datasets.c.dataset_id.in_(stale)).values(status="superseded"))
        return len(stale)

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
        """Write the dataset and its ledger rows in the caller's transaction: all or nothing."""
        dataset_id = f"ds-{partition_key}-{uuid.uuid4().hex[:10]}"
        conn.execute(
            datasets.insert().values(
                dataset_id=dataset_id,
                partition_key=partition_key,
                dataset_hash=dataset_hash,
                status="collected",
                n_train=len(train),
                n_holdout=len(holdout),
                n_rejected=len(rejected),
                created_at=utcnow(),
                details=dict(details),
            )
        )
        rows = [
            {"post_id": pid, "dataset_id": dataset_id, "role": "train", "reason": None, "content_hash": h}
            for pid, h in train
        ]
        rows += [
            {"post_id": pid, "dataset_id": dataset_id, "role": "holdout", "reason": None, "content_hash": h}
            for pid, h in holdout
        ]
        rows += [
            {"post_id": pid, "dataset_id": dataset_id, "role": "rejected", "reason": r, "content_hash": None}
            for pid, r in rejected
        ]
        for start in range(0, len(rows), 2000):
            conn.execute(ledger.insert(), rows[start : start + 2000])
        return dataset_id

    def set_dataset_status(self, dataset_id: str, status: str, conn: Connection | None = None) -> None:
        statement = datasets.update().where(datasets.c.dataset_id == dataset_id).values(status=status)
        if conn is not None:
            conn.execute(statement)
            return
        with self.engine.begin() as own:
            own.execute(statement)

    def reject_dataset(self, dataset_id: str, conn: Connection) -> None:
        """A dataset that failed its checks gives its posts back to the pool."""
        conn.execute(ledger.delete().where(ledger.c.dataset_id == dataset_id))
        conn.execute(datasets.update().where(datasets.c.dataset_id == dataset_id).values(status="rejected"))

    def get_dataset(self, dataset_id: str) -> dict[str, Any] | None:
        return self._first(sa.select(datasets).where(datasets.c.dataset_id == dataset_id))

    def latest_dataset(self, partition_key: str, statuses: Sequence[str] = DATASET_ACTIVE) -> dict[str, Any] | None:
        query = (
            sa.select(datasets)
            .where(datasets.c.partition_key == partition_key, datasets.c.status.in_(statuses))
            .order_by(datasets.c.created_at.desc())
            .limit(1)
        )
        return self._first(query)

    def load_examples(self, dataset_id: str, role: str) -> list[ChatExample]:
        """Rebuild a dataset's examples from the ledger and the posts: no files pass between steps."""
        p = self.posts.c
        query = (
            sa.select(p.post_id, p.prompt_messages, p.completion)
            .join(ledger, ledger.c.post_id == p.post_id)
            .where(ledger.c.dataset_id == dataset_id, ledger.c.role == role)
            .order_by(p.post_id)
        )
        examples = []
        with self.engine.connect() as conn:
            for post_id, prompt, completion in conn.execute(query):
                messages = [{"role": m["role"], "content": m["content"]} for m in json.loads(prompt)]
                messages.append({"role": "assistant", "content": completion.strip()})
                examples.append(ChatExample(post_id=int(post_id), messages=tuple(messages)))
        return examples

    def ledger_posts(self, dataset_id: str, role: str | None = None) -> list[tuple[int, str, str | None]]:
        query = sa.select(ledger.c.post_id, ledger.c.role, ledger.c.reason).where(ledger.c.dataset_id == dataset_id)
        if role is not None:
            query = query.where(ledger.c.role == role)
        with self.engine.connect() as conn:
            return [(int(a), b, c) for a, b, c in conn.execute(query.order_by(ledger.c.post_id))]

    # -- models and evaluations ----------------------------------------------------------------------------

    def record_model(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(models.c.model_id).where(models.c.model_id == values["model_id"])).first()
            if exists:
                conn.execute(models.update().where(models.c.model_id == values["model_id"]).values(**values))
            else:
                conn.execute(models.insert().values(created_at=utcnow(), **values))
            if values.get("status") == "succeeded":
                conn.execute(
                    datasets.update().where(datasets.c.dataset_id == values["dataset_id"]).values(status="trained")
                )

    def latest_model(self, partition_key: str) -> dict[str, Any] | None:
        query = (
            sa.select(models)
            .where(models.c.partition_key == partition_key)
            .order_by(models.c.created_at.desc())
            .limit(1)
        )
        return self._first(query)

    def get_model(self, model_id: str) -> dict[str, Any] | None:
        return self._first(sa.select(models).where(models.c.model_id == model_id))

    def recent_models(self, limit: int = 5) -> list[dict[str, Any]]:
        """The newest fine-tuned models of any cycle, newest first."""
        query = sa.select(models).order_by(models.c.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def evaluation_of(self, model_id: str) -> dict[str, Any] | None:
        """The newest evaluation of `model_id` as the candidate."""
        query = (
            sa.select(evaluations)
            .where(evaluations.c.candidate_model == model_id)
            .order_by(evaluations.c.created_at.desc())
        )
        return self._first(query)

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

    def latest_evaluation(self, partition_key: str) -> dict[str, Any] | None:
        query = (
            sa.select(evaluations)
            .where(evaluations.c.partition_key == partition_key)
            .order_by(evaluations.c.created_at.desc())
            .limit(1)
        )
        return self._first(query)

    def waiting_candidate(self) -> dict[str, Any] | None:
        """The newest candidate that passed evaluation but has not had its experiment yet (it waited for one
        that was running), or None. Older passed candidates are superseded by a newer one."""
        evaluation = self._first(
            sa.select(evaluations).where(evaluations.c.passed.is_(True)).order_by(evaluations.c.created_at.desc())
        )
        if evaluation is None:
            return None
        tested = self._first(
            sa.select(experiments.c.experiment_id).where(
                experiments.c.treatment_model == evaluation["candidate_model"],
                experiments.c.partition_key == evaluation["partition_key"],
            )
        )
        return None if tested else evaluation

    # -- experiments ---------------------------------------------------------------------------------------

    def running_experiment(self) -> dict[str, Any] | None:
        query = sa.select(experiments).where(experiments.c.status == "running").order_by(experiments.c.started_at)
        return self._first(query)

    def start_experiment(self, **values: Any) -> dict[str, Any]:
        """Insert a running experiment; refuses a second one (only one experiment runs at a time)."""
        with self.engine.begin() as conn:
            running = conn.execute(
                sa.select(experiments.c.experiment_id, experiments.c.ends_at).where(experiments.c.status == "running")
            ).first()
            if running is not None:
                raise ExperimentAlreadyRunning(running[0], as_utc(running[1]))
            conn.execute(experiments.insert().values(status="running", details={}, **values))
        experiment = self.get_experiment(values["experiment_id"])
        assert experiment is not None
        return experiment

    def get_experiment(self, experiment_id: str) -> dict[str, Any] | None:
        return self._first(sa.select(experiments).where(experiments.c.experiment_id == experiment_id))

    def latest_experiment(self, partition_key: str | None = None) -> dict[str, Any] | None:
        query = sa.select(experiments).order_by(experiments.c.started_at.desc()).limit(1)
        if partition_key is not None:
            query = query.where(experiments.c.partition_key == partition_key)
        return self._first(query)

    def decide_experiment(
        self, experiment_id: str, *, status: str, decision: str, reason: str, details: Mapping[str, Any]
    ) -> None:
        with self.engine.begin() as conn:
            current = conn.execute(
                sa.select(experiments.c.details).where(experiments.c.experiment_id == experiment_id)
            ).scalar()
            conn.execute(
                experiments.update()
                .where(experiments.c.experiment_id == experiment_id)
                .values(
                    status=status,
                    decision=decision,
                    reason=reason,
                    decided_at=utcnow(),
                    details={**(current or {}), **json.loads(json.dumps(details))},
                )
            )

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
            current = conn.execute(
                sa.select(experiments.c.details).where(experiments.c.experiment_id == experiment_id)
            ).scalar()
            conn.execute(
                experiments.update()
                .where(experiments.c.experiment_id == experiment_id)
                .values(details={**(current or {}), **details})
            )

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

    def experiment_of(self, model_id: str) -> dict[str, Any] | None:
        """The newest experiment that served `model_id` as the treatment."""
        query = (
            sa.select(experiments)
            .where(experiments.c.treatment_model == model_id)
            .order_by(experiments.c.started_at.desc())
        )
        return self._first(query)

    def promotion_of(self, experiment_id: str) -> dict[str, Any] | None:
        """The routing decision recorded for an experiment (promoted or kept), if any."""
        return self._first(sa.select(promotions).where(promotions.c.experiment_id == experiment_id))

    # -- promotions ----------------------------------------------------------------------------------------

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

    def production_model(self, default: str) -> str:
        """The model the app should call now: the last promoted one, or the configured base model."""
        query = (
            sa.select(promotions.c.model_id)
            .where(promotions.c.promoted.is_(True))
            .order_by(promotions.c.promotion_id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            model_id = conn.execute(query).scalar()
        return str(model_id) if model_id else default

    # -- files uploaded to a fine-tuning API -----------------------------------------------------------------

    def uploaded_file(self, endpoint: str, sha256: str) -> str | None:
        """The file id an earlier upload of these exact bytes got at `endpoint`, or None."""
        query = sa.select(uploaded_files.c.file_id).where(
            uploaded_files.c.endpoint == endpoint, uploaded_files.c.sha256 == sha256
        )
        with self.engine.connect() as conn:
            file_id = conn.execute(query).scalar()
        return str(file_id) if file_id else None

    def remember_upload(
        self, *, endpoint: str, sha256: str, file_id: str, purpose: str, n_bytes: int, filename: str
    ) -> None:
        """Record (or replace, when the provider lost the old one) the file id for these bytes."""
        key = sa.and_(uploaded_files.c.endpoint == endpoint, uploaded_files.c.sha256 == sha256)
        values = {"file_id": file_id, "purpose": purpose, "n_bytes": n_bytes, "filename": filename}
        with self.engine.begin() as conn:
            if not conn.execute(uploaded_files.update().where(key).values(**values)).rowcount:
                conn.execute(
                    uploaded_files.insert().values(endpoint=endpoint, sha256=sha256, created_at=utcnow(), **values)
                )


class ExperimentAlreadyRunning(FinetuneAssetsError, RuntimeError):
    def __init__(self, experiment_id: str, ends_at: datetime) -> None:
        super().__init__(
            f"experiment {experiment_id} is still running until {ends_at:%Y-%m-%d %H:%M} UTC; "
            "only one experiment runs at a time, so this candidate waits"
        )
        self.experiment_id = experiment_id
        self.ends_at = ends_at
