"""The evaluation-score cache: keys, TTL, hit/miss counts, and Redis failing at the start or mid-run.

Tests marked `integration` talk to the real Redis (`$FINETUNE_TEST_REDIS_URL`, default 127.0.0.1:6379) under a
key prefix of their own, or to a private `redis-server` they stop; they fail, never skip, without Redis.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest
import redis

from finetune_assets.evaluation.cache import MISSING, EvaluationCache, LocalStore, content_hash
from finetune_assets.resources.cache import RedisResource
from finetune_assets_tests.fixtures.mlflow_server import free_port
from finetune_assets_tests.fixtures.services import PrivateRedis


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counter:
    def __init__(self, value: object) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.value


def local_cache(clock: Clock | None = None, **kwargs: object) -> EvaluationCache:
    store = LocalStore(clock=clock) if clock else LocalStore()
    return EvaluationCache(store, key_prefix="t", ttl_seconds=60, **kwargs)  # type: ignore[arg-type]


def test_get_or_compute_computes_once_and_counts_per_kind() -> None:
    cache = local_cache()
    compute = Counter({"score": 0.25, "label": "a"})
    assert cache.get_or_compute("judge", ["m", "in", "out", "v1"], compute) == {"score": 0.25, "label": "a"}
    assert cache.get_or_compute("judge", ["m", "in", "out", "v1"], compute) == {"score": 0.25, "label": "a"}
    assert compute.calls == 1
    assert cache.get_or_compute("loss", ["m", "in", "out", "v1"], Counter(1.5)) == 1.5  # same parts, other kind
    assert cache.stats() == {"judge": {"hits": 1, "misses": 1}, "loss": {"hits": 0, "misses": 1}}
    assert (cache.hits, cache.misses) == (1, 2)
    assert cache.metadata()["cache"] == "in-process"


def test_every_part_is_in_the_key() -> None:
    cache = local_cache()
    base = ["model-a", content_hash("prompt"), content_hash("output"), "scorer-v1"]
    keys = {cache.key("judge", base)}
    for i in range(len(base)):
        changed = list(base)
        changed[i] += "x"
        keys.add(cache.key("judge", changed))
    keys.add(cache.key("judge", [*base[:2], base[2] + base[3]]))  # joining is unambiguous
    assert len(keys) == len(base) + 2
    assert all(key.startswith("t:eval:judge:") for key in keys)


def test_null_is_a_value_and_get_many_reports_missing() -> None:
    cache = local_cache()
    cache.set_many("k", {("a",): None, ("b",): [1, 2]})
    assert cache.get_many("k", [("a",), ("b",), ("c",)]) == [None, [1, 2], MISSING]


def test_values_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = local_cache(clock)
    compute = Counter(3)
    cache.get_or_compute("k", ["p"], compute)
    clock.now += 59
    cache.get_or_compute("k", ["p"], compute)
    assert compute.calls == 1
    clock.now += 2
    cache.get_or_compute("k", ["p"], compute)
    assert compute.calls == 2


def test_the_in_process_store_is_bounded() -> None:
    store = LocalStore(max_entries=3)
    store.set_many({f"k{i}": str(i) for i in range(5)}, ttl_seconds=60)
    assert store.get_many(["k0", "k1", "k2", "k3", "k4"]) == [None, None, "2", "3", "4"]


def test_no_store_always_computes() -> None:
    cache = EvaluationCache(None, key_prefix="t", ttl_seconds=60, description="off")
    compute = Counter(1)
    cache.get_or_compute("k", ["p"], compute)
    cache.get_or_compute("k", ["p"], compute)
    assert compute.calls == 2
    assert cache.stats() == {"k": {"hits": 0, "misses": 2}}


class BrokenAfter:
    """A store that fails from its n-th operation on, as Redis stopped mid-run does."""

    name = "redis"

    def __init__(self, ok_operations: int) -> None:
        self.inner = LocalStore()
        self.left = ok_operations

    def _tick(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ConnectionError("Connection refused")

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        self._tick()
        return self.inner.get_many(keys)

    def set_many(self, items: Mapping[str, str], ttl_seconds: int) -> None:
        self._tick()
        self.inner.set_many(items, ttl_seconds)


def test_a_store_failing_mid_run_warns_once_and_the_rest_is_uncached() -> None:
    warnings: list[str] = []
    cache = EvaluationCache(BrokenAfter(2), key_prefix="t", ttl_seconds=60, warn=warnings.append)
    compute = Counter(7)
    assert [cache.get_or_compute("k", [str(i)], compute) for i in range(5)] == [7] * 5
    assert compute.calls == 5
    assert len(warnings) == 1 and "continuing without cache" in warnings[0]
    assert cache.store is None
    assert "failed mid-run (ConnectionError): continued uncached" in cache.describe()


def test_garbage_under_a_key_is_recomputed() -> None:
    store = LocalStore()
    cache = EvaluationCache(store, key_prefix="t", ttl_seconds=60)
    store.set_many({cache.key("k", ["p"]): "{not json"}, ttl_seconds=60)
    assert cache.get_or_compute("k", ["p"], Counter(4)) == 4
    assert json.loads(store.get_many([cache.key("k", ["p"])])[0] or "null") == 4


def test_a_ttl_below_one_second_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl_seconds = 0"):
        EvaluationCache(None, key_prefix="t", ttl_seconds=0)


def test_without_a_url_the_cache_is_in_process_and_scoped() -> None:
    warnings: list[str] = []
    a = RedisResource().evaluation_cache(ttl_seconds=60, warn=warnings.append, local_scope="/state/a")
    b = RedisResource().evaluation_cache(ttl_seconds=60, warn=warnings.append, local_scope="/state/b")
    a.get_or_compute("k", ["p"], Counter(1))
    assert a.describe() == "in-process" and a.store is b.store
    assert b.get_or_compute("k", ["p"], Counter(2)) == 2  # another state directory: another scope
    assert (
        RedisResource()
        .evaluation_cache(ttl_seconds=60, warn=warnings.append, local_scope="/state/a")
        .get_or_compute("k", ["p"], Counter(3))
        == 1
    )
    assert warnings == []


# --- the real Redis -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_redis_hits_misses_and_ttl(redis_resource: RedisResource) -> None:
    warnings: list[str] = []
    cache = redis_resource.evaluation_cache(ttl_seconds=3600, warn=warnings.append)
    assert cache.describe() == "redis"
    compute = Counter([0.5, "x"])
    parts = ["ft:model", content_hash("in"), content_hash("out"), "v1"]
    assert cache.get_or_compute("judge", parts, compute) == [0.5, "x"]
    # a second cache (the rerun, another process) reads it back
    again = redis_resource.evaluation_cache(ttl_seconds=3600, warn=warnings.append)
    assert again.get_or_compute("judge", parts, compute) == [0.5, "x"]
    assert compute.calls == 1
    assert (cache.stats(), again.stats()) == ({"judge": {"hits": 0, "misses": 1}}, {"judge": {"hits": 1, "misses": 0}})

    client = redis_resource.client()
    assert client is not None
    key = cache.key("judge", parts)
    assert key.startswith(f"{redis_resource.key_prefix}:eval:judge:")
    assert 3590 <= client.ttl(key) <= 3600
    assert json.loads(client.get(key)) == [0.5, "x"]  # type: ignore[arg-type]
    many = {(str(i),): i for i in range(50)}
    cache.set_many("bulk", many)
    assert all(0 < client.ttl(cache.key("bulk", p)) <= 3600 for p in many)
    assert cache.get_many("bulk", [*many, ("absent",)]) == [*range(50), MISSING]
    assert warnings == []


@pytest.mark.integration
def test_redis_down_at_the_start_is_one_warning_and_no_cache() -> None:
    warnings: list[str] = []
    down = RedisResource(url=f"redis://127.0.0.1:{free_port()}/0", key_prefix="finetune-assets-test:down")
    cache = down.evaluation_cache(ttl_seconds=60, warn=warnings.append)
    compute = Counter(1)
    for _ in range(3):
        cache.get_or_compute("k", ["p"], compute)
    assert compute.calls == 3
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "continuing without cache" in warnings[0]
    assert cache.describe() == "off (Redis unreachable)"


@pytest.mark.integration
def test_redis_stopped_mid_run_continues_uncached(private_redis: PrivateRedis) -> None:
    warnings: list[str] = []
    resource = RedisResource(url=private_redis.url, key_prefix="finetune-assets-test:fault")
    cache = resource.evaluation_cache(ttl_seconds=60, warn=warnings.append)
    compute = Counter("v")
    cache.get_or_compute("k", ["1"], compute)
    cache.get_or_compute("k", ["1"], compute)
    assert (compute.calls, cache.hits) == (1, 1)
    private_redis.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(private_redis.url, socket_connect_timeout=0.5).ping()
    assert [cache.get_or_compute("k", [str(i)], compute) for i in range(1, 6)] == ["v"] * 5
    assert compute.calls == 6  # all five computed: the one cached value is gone with Redis
    assert len(warnings) == 1 and "redis failed" in warnings[0]
    assert "failed mid-run" in cache.describe()
