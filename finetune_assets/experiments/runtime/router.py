"""Which model serves a user right now — for the content app, which imports this module (no Dagster).

``Router.route(user_id)`` returns the running experiment's arm for the user (the pure hash of
:func:`~finetune_assets.experiments.runtime.assignment.assign_variant`, so no shared state is needed to assign)
or the production model. Only *which experiment is running* and *which model is in production* are
looked up, in this order:

1. the in-process snapshot, refreshed every ``refresh_seconds`` (30 s);
2. Redis (one JSON key with a TTL, written by :func:`publish`) — a cache, never the truth;
3. the SQL store: the running experiment and the latest promoted model (else the configured default
   model), read by the store's own query functions (:func:`~finetune_assets.store.experiments.read_running_experiment`,
   :func:`~finetune_assets.store.promotions.read_production_model`). On a Redis miss the router writes what it
   read back to Redis with ``SET NX`` (an explicit :func:`publish` always wins).

Redis down, empty, or holding garbage → the answer comes from SQL: never wrong, only slower. If SQL is
down too, the last good snapshot keeps serving; with none at all, :class:`RoutingUnavailable` is raised.
Those queries are the ones the store itself runs, read only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.engine import Engine

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.experiments.runtime.assignment import Variant, assign_variant
from finetune_assets.store.engine import make_engine
from finetune_assets.store.experiments import read_running_experiment
from finetune_assets.store.promotions import read_production_model
from finetune_assets.store.records import ExperimentRecord

log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "finetune-assets:routing"
DEFAULT_TTL_SECONDS = 300
"""TTL of the Redis key: a stale cache expires even if nobody republishes."""
DEFAULT_REFRESH_SECONDS = 30.0
SNAPSHOT_VERSION = 1

Source = Literal["redis", "sql"]


def redis_key(key_prefix: str = DEFAULT_KEY_PREFIX) -> str:
    """The one Redis key holding the routing snapshot."""
    return f"{key_prefix}:active"


class RoutingUnavailable(FinetuneAssetsError, RuntimeError):
    """Neither Redis nor SQL answered and no earlier snapshot exists."""


@dataclass(frozen=True)
class Route:
    """Where one request goes. ``variant``/``experiment_id`` are None for users outside an experiment
    (no experiment running, or not enrolled under its coverage): they get production and must not be
    logged as exposed; otherwise log the exposure and tag the post with both."""

    variant: Variant | None
    model_id: str
    experiment_id: str | None


@dataclass(frozen=True)
class ActiveExperiment:
    """What routing needs of a running experiment (a subset of an ``ft_experiments`` row)."""

    experiment_id: str
    salt: str
    split: float
    coverage: float
    control_model: str
    treatment_model: str

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> ActiveExperiment:
        """From an ``ft_experiments`` row (or any mapping with these keys); validates the values."""
        missing = [
            f
            for f in ("experiment_id", "salt", "split", "coverage", "control_model", "treatment_model")
            if f not in row
        ]
        if missing:
            raise ValueError(f"experiment is missing {', '.join(missing)}")
        if "status" in row and row["status"] != "running":
            raise ValueError(f"only a running experiment routes traffic, got status {row['status']!r}")
        experiment = cls(
            experiment_id=str(row["experiment_id"]),
            salt=str(row["salt"]),
            split=float(row["split"]),
            coverage=float(row["coverage"]),
            control_model=str(row["control_model"]),
            treatment_model=str(row["treatment_model"]),
        )
        assign_variant("0", experiment.salt, split=experiment.split, coverage=experiment.coverage)  # validates
        return experiment

    @classmethod
    def from_record(cls, record: ExperimentRecord) -> ActiveExperiment:
        """From the store's record of the experiment; validates it as :meth:`from_mapping` does."""
        return cls.from_mapping({"experiment_id": record.experiment_id, "status": record.status, **record.phase()})


@dataclass(frozen=True)
class RoutingSnapshot:
    """The running experiment (or None) and the production model, with where they were read."""

    experiment: ActiveExperiment | None
    production_model: str
    source: Source

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": SNAPSHOT_VERSION,
                "experiment": asdict(self.experiment) if self.experiment else None,
                "production_model": self.production_model,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str | bytes, source: Source = "redis") -> RoutingSnapshot:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown routing snapshot format: {raw!r:.200}")
        production = data.get("production_model")
        if not isinstance(production, str) or not production:
            raise ValueError("routing snapshot has no production_model")
        experiment = data.get("experiment")
        return cls(ActiveExperiment.from_mapping(experiment) if experiment else None, production, source)

    def route(self, user_id: str | int) -> Route:
        exp = self.experiment
        if exp is None:
            return Route(None, self.production_model, None)
        variant = assign_variant(user_id, exp.salt, split=exp.split, coverage=exp.coverage)
        if variant is None:
            return Route(None, self.production_model, None)
        model = exp.treatment_model if variant == "treatment" else exp.control_model
        return Route(variant, model, exp.experiment_id)


def read_snapshot_from_sql(engine: Engine, default_model: str) -> RoutingSnapshot:
    """The truth: the running experiment (the oldest, as the store's ``running_experiment``) and the
    latest promoted model, else ``default_model``, read by the store's own queries."""
    with engine.connect() as conn:
        running = read_running_experiment(conn)
        production = read_production_model(conn, default_model)
    experiment = ActiveExperiment.from_record(running) if running is not None else None
    return RoutingSnapshot(experiment, production, "sql")


def publish(
    client: redis.Redis,
    experiment: ExperimentRecord | Mapping[str, Any] | ActiveExperiment | None,
    *,
    production_model: str,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    only_if_absent: bool = False,
) -> bool:
    """Write the routing snapshot to Redis (``SET key json EX ttl``); True if written.

    Call it whenever the answer changes — an experiment starts, stops or is decided, a model is
    promoted — with the running experiment (the store's record of it works) or None, and the
    production model. Routers pick it up within ``refresh_seconds``; the TTL bounds staleness if a
    publish is ever missed. ``only_if_absent`` (``NX``) is what routers use for their write-back.
    """
    if not isinstance(production_model, str) or not production_model:
        raise ValueError(f"production_model must be a non-empty string, got {production_model!r}")
    if not (isinstance(ttl_seconds, int) and ttl_seconds > 0):
        raise ValueError(f"ttl_seconds must be a positive int, got {ttl_seconds!r}")
    if experiment is None or isinstance(experiment, ActiveExperiment):
        active = experiment
    elif isinstance(experiment, ExperimentRecord):
        active = ActiveExperiment.from_record(experiment)
    else:
        active = ActiveExperiment.from_mapping(experiment)
    payload = RoutingSnapshot(active, production_model, "redis").to_json()
    return bool(client.set(redis_key(key_prefix), payload, ex=ttl_seconds, nx=only_if_absent))


def redis_client(url: str, *, timeout_seconds: float = 0.25) -> redis.Redis:
    """A client that fails fast (no retries, short timeouts): a slow cache is worse than none."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
    )


class Router:
    """Routes content-app requests; thread-safe, one per process.

    Args:
        store: SQLAlchemy URL of the platform store (``DATABASE_URL``) or an Engine.
        redis_url: Redis URL of the cache, or None to read SQL only.
        default_model: the production model when nothing was ever promoted (``settings.base_model``).
        refresh_seconds: how long the in-process snapshot is served before it is re-read.
        key_prefix: Redis key prefix (:func:`redis_key`); must match :func:`publish`.
        ttl_seconds: TTL of the write-back on a Redis miss.
        client: an existing redis client (instead of ``redis_url``).
        clock: monotonic seconds (tests inject a fake).
    """

    def __init__(
        self,
        store: str | Engine,
        redis_url: str | None = None,
        *,
        default_model: str,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(default_model, str) or not default_model:
            raise ValueError(f"default_model must be a non-empty string, got {default_model!r}")
        if not (isinstance(refresh_seconds, int | float) and refresh_seconds >= 0):
            raise ValueError(f"refresh_seconds must be >= 0, got {refresh_seconds!r}")
        self.engine = make_engine(store) if isinstance(store, str) else store
        self.redis = client if client is not None else (redis_client(redis_url) if redis_url else None)
        self.default_model = default_model
        self.refresh_seconds = float(refresh_seconds)
        self.key_prefix = key_prefix
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: RoutingSnapshot | None = None
        self._fetched_at = 0.0
        self._redis_retry_at = 0.0

    def route(self, user_id: str | int) -> Route:
        """The model (and arm) for this user now."""
        return self.snapshot().route(user_id)

    def snapshot(self) -> RoutingSnapshot:
        """The current snapshot, re-read when older than ``refresh_seconds``."""
        current = self._snapshot
        if current is not None and self._clock() - self._fetched_at < self.refresh_seconds:
            return current
        with self._lock:
            current = self._snapshot
            if current is not None and self._clock() - self._fetched_at < self.refresh_seconds:
                return current  # another thread refreshed it meanwhile
            return self._refresh_locked()

    def refresh(self) -> RoutingSnapshot:
        """Re-read now (Redis, then SQL), whatever the age of the snapshot."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> RoutingSnapshot:
        cached, redis_ok = self._read_redis()
        if cached is not None:
            return self._keep(cached)
        try:
            fresh = read_snapshot_from_sql(self.engine, self.default_model)
        except Exception as exc:
            if self._snapshot is None:
                raise RoutingUnavailable(f"no routing snapshot: Redis and SQL both failed ({exc})") from exc
            log.warning("routing: SQL store unreachable (%s); serving the last snapshot", exc)
            self._fetched_at = self._clock()  # retry after another refresh period, not on every request
            return self._snapshot
        if redis_ok and self.redis is not None:
            try:
                publish(
                    self.redis,
                    fresh.experiment,
                    production_model=fresh.production_model,
                    key_prefix=self.key_prefix,
                    ttl_seconds=self.ttl_seconds,
                    only_if_absent=True,
                )
            except (redis.RedisError, OSError) as exc:
                log.warning("routing: could not write the snapshot back to Redis (%s)", exc)
        return self._keep(fresh)

    def _keep(self, snapshot: RoutingSnapshot) -> RoutingSnapshot:
        self._snapshot = snapshot
        self._fetched_at = self._clock()
        return snapshot

    def _read_redis(self) -> tuple[RoutingSnapshot | None, bool]:
        """(snapshot or None on a miss, whether Redis answered). Backs off for a refresh period after
        a connection error, so a dead Redis costs one failed call per period, not one per request."""
        if self.redis is None or self._clock() < self._redis_retry_at:
            return None, False
        try:
            raw = self.redis.get(redis_key(self.key_prefix))
        except (redis.RedisError, OSError) as exc:
            log.warning("routing: Redis unreachable (%s); reading the SQL store", exc)
            self._redis_retry_at = self._clock() + self.refresh_seconds
            return None, False
        if raw is None:
            return None, True
        try:
            return RoutingSnapshot.from_json(raw), True
        except (ValueError, TypeError) as exc:
            log.warning("routing: ignoring a malformed Redis snapshot (%s); reading the SQL store", exc)
            return None, False  # do not NX-write over it; an explicit publish replaces it


__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_REFRESH_SECONDS",
    "DEFAULT_TTL_SECONDS",
    "ActiveExperiment",
    "Route",
    "Router",
    "RoutingSnapshot",
    "RoutingUnavailable",
    "publish",
    "read_snapshot_from_sql",
    "redis_client",
    "redis_key",
]
