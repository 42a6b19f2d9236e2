"""The evaluation-score cache: a rerun on the same candidate generates and scores nothing twice.

Every cached value is JSON, stored under `<key_prefix>:eval:<kind>:<sha256 of the parts>`, where the parts say
exactly what the value depends on (model id, input hash, output hash, scorer version, generation options):
change any of them and the key changes, so nothing is ever invalidated by hand. Values expire after the TTL.

The store is Redis (`REDIS_URL`) or, on the embedded default, a bounded in-process dict. Redis is only an
accelerator: unreachable at the start or failing mid-evaluation, it costs one warning and the evaluation
continues uncached — never a failed run.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

if TYPE_CHECKING:
    import redis

T = TypeVar("T")

MISSING: Any = object()
"""What `get_many` returns for a key it does not hold (JSON `null` is a legitimate cached value)."""


def content_hash(value: Any) -> str:
    """sha256 of `value` as canonical JSON: the input/output hash that goes into a key's parts."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class CacheStore(Protocol):
    """Where values live: raw JSON text by full key, with a TTL."""

    name: str

    def get_many(self, keys: Sequence[str]) -> list[str | None]: ...

    def set_many(self, items: Mapping[str, str], ttl_seconds: int) -> None: ...


class LocalStore:
    """In-process, bounded (LRU) and expiring: the embedded default, shared by every cache in the process."""

    name = "in-process"

    def __init__(self, max_entries: int = 50_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries
        self._clock = clock

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        now = self._clock()
        found: list[str | None] = []
        with self._lock:
            for key in keys:
                item = self._items.get(key)
                if item is None or item[0] <= now:
                    self._items.pop(key, None)
                    found.append(None)
                else:
                    self._items.move_to_end(key)
                    found.append(item[1])
        return found

    def set_many(self, items: Mapping[str, str], ttl_seconds: int) -> None:
        expires = self._clock() + ttl_seconds
        with self._lock:
            for key, value in items.items():
                self._items[key] = (expires, value)
                self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)


class RedisStore:
    """MGET for reads; SET with EX in one pipeline for writes (MSET cannot carry a TTL)."""

    name = "redis"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        raw = cast(list[bytes | str | None], self.client.mget(list(keys)))
        return [v.decode() if isinstance(v, bytes) else v for v in raw]

    def set_many(self, items: Mapping[str, str], ttl_seconds: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value in items.items():
            pipe.set(key, value, ex=ttl_seconds)
        pipe.execute()


_LOCAL = LocalStore()


def local_store() -> LocalStore:
    """The process-wide in-process store."""
    return _LOCAL


@dataclass
class KindStats:
    hits: int = 0
    misses: int = 0


class EvaluationCache:
    """Get-or-compute over a `CacheStore`, counting hits and misses per kind.

    `store=None` is "no cache": every lookup misses and computes. A store that raises (Redis stopped mid-run)
    is dropped after one warning; the evaluation goes on uncached.
    """

    def __init__(
        self,
        store: CacheStore | None,
        *,
        key_prefix: str,
        ttl_seconds: int,
        warn: Callable[[str], None] | None = None,
        description: str | None = None,
    ) -> None:
        if ttl_seconds < 1:
            raise ValueError(f"cache ttl_seconds = {ttl_seconds}: expected at least 1")
        self.store = store
        self.key_prefix = key_prefix
        self.ttl_seconds = ttl_seconds
        self._warn = warn
        self._description = description or (store.name if store else "off")
        self._failure: str | None = None
        self._stats: dict[str, KindStats] = {}
        self._lock = threading.Lock()

    # -- keys --------------------------------------------------------------------------------------------

    def key(self, kind: str, parts: Sequence[str]) -> str:
        """`<prefix>:eval:<kind>:<sha256 of the parts>`; parts are joined unambiguously (JSON list)."""
        return f"{self.key_prefix}:eval:{kind}:{content_hash(list(parts))}"

    # -- reads and writes --------------------------------------------------------------------------------

    def get_or_compute(self, kind: str, parts: Sequence[str], compute: Callable[[], T]) -> T:
        """The cached value for (kind, parts), else `compute()` stored for next time. Values are JSON."""
        [found] = self.get_many(kind, [parts])
        if found is not MISSING:
            return cast(T, found)
        value = compute()
        self.set_many(kind, {tuple(parts): value})
        return value

    def get_many(self, kind: str, parts_list: Sequence[Sequence[str]]) -> list[Any]:
        """One value per parts, `MISSING` where the cache has none; counts hits and misses."""
        found: list[Any] = [MISSING] * len(parts_list)
        store = self.store
        if store is not None and parts_list:
            try:
                raw = store.get_many([self.key(kind, parts) for parts in parts_list])
            except Exception as exc:  # any store error: continue uncached, never fail the run
                self._drop(exc)
            else:
                for i, text in enumerate(raw):
                    if text is not None:
                        try:
                            found[i] = json.loads(text)
                        except ValueError:  # garbage under our key: recompute and overwrite
                            continue
        hits = sum(value is not MISSING for value in found)
        with self._lock:
            stats = self._stats.setdefault(kind, KindStats())
            stats.hits += hits
            stats.misses += len(found) - hits
        return found

    def set_many(self, kind: str, values: Mapping[tuple[str, ...], Any]) -> None:
        """Store computed values (JSON-serializable) under their keys, with the TTL."""
        store = self.store
        if store is None or not values:
            return
        items = {self.key(kind, parts): json.dumps(value) for parts, value in values.items()}
        try:
            store.set_many(items, self.ttl_seconds)
        except Exception as exc:
            self._drop(exc)

    def _drop(self, exc: Exception) -> None:
        with self._lock:
            if self.store is None:
                return
            name, self.store = self.store.name, None
            self._failure = f"{type(exc).__name__}"
        if self._warn is not None:
            self._warn(
                f"evaluation cache: {name} failed ({type(exc).__name__}: {str(exc)[:200]}); continuing without cache"
            )

    # -- reporting ---------------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """{kind: {"hits": n, "misses": n}}, the kinds in the order first used."""
        with self._lock:
            return {kind: {"hits": s.hits, "misses": s.misses} for kind, s in self._stats.items()}

    @property
    def hits(self) -> int:
        return sum(s["hits"] for s in self.stats().values())

    @property
    def misses(self) -> int:
        return sum(s["misses"] for s in self.stats().values())

    def describe(self) -> str:
        """Where values came from, for metadata: `redis`, `in-process`, `off`, or what failed mid-run."""
        if self._failure is not None:
            return f"{self._description}, failed mid-run ({self._failure}): continued uncached"
        return self._description

    def metadata(self) -> dict[str, Any]:
        """What the asset reports: the backend, the TTL, totals and per-kind counts."""
        return {
            "cache": self.describe(),
            "cache_ttl_hours": round(self.ttl_seconds / 3600, 3),
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "cache_by_kind": self.stats(),
        }
