"""Redis, as a cache only: the evaluation-score cache and the content app's routing snapshot.

Redis is never the truth (the SQL store is), so an unreachable Redis is a warning and no cache, never a
failed run. The URL comes from `REDIS_URL` through `dg.EnvVar`; unset, there is no cache at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg

from finetune_assets.service_urls import check_redis_url, env_value

if TYPE_CHECKING:
    import redis

    from finetune_assets.evaluation.cache import EvaluationCache


class RedisResource(dg.ConfigurableResource):
    """`url` unset: no cache. `key_prefix` keeps tests (and several deployments sharing one Redis) apart."""

    url: str | None = None
    key_prefix: str = "finetune-assets"
    timeout_seconds: float = 0.25

    def resolved_url(self) -> str | None:
        """`url`, checked: a malformed one is a configuration mistake (one `ServiceUrlError` line), not "down"."""
        url = env_value(self.url)
        return check_redis_url(url) if url else None

    def client(self, warn: Callable[[str], None] | None = None) -> redis.Redis | None:
        """A fail-fast client that answered PING, or None (with one warning) when Redis is unset or down."""
        url = self.resolved_url()
        if not url:
            return None
        from finetune_assets.experiments.runtime.router import redis_client
        from finetune_assets.resources.tracking import redact

        client = redis_client(url, timeout_seconds=self.timeout_seconds)
        try:
            client.ping()
        except Exception as exc:  # any connection/auth/protocol error means: no cache
            if warn is not None:
                warn(f"Redis at {redact(url)} is unreachable ({type(exc).__name__}); continuing without cache")
            return None
        return client

    def key(self, *parts: str) -> str:
        return ":".join((self.key_prefix, *parts))

    def evaluation_cache(
        self, *, ttl_seconds: int, warn: Callable[[str], None], local_scope: str = ""
    ) -> EvaluationCache:
        """The evaluation-score cache: Redis under `key_prefix` when `url` is set and answers; without `url`
        the process's in-process store (keys scoped by `local_scope`, e.g. the state directory, since a local
        model id means something only there); `url` set but Redis down: one warning, no cache."""
        from finetune_assets.evaluation.cache import EvaluationCache, RedisStore, local_store

        if not self.resolved_url():
            prefix = f"{self.key_prefix}@{local_scope}" if local_scope else self.key_prefix
            return EvaluationCache(local_store(), key_prefix=prefix, ttl_seconds=ttl_seconds, warn=warn)
        client = self.client(warn)
        if client is None:
            return EvaluationCache(
                None,
                key_prefix=self.key_prefix,
                ttl_seconds=ttl_seconds,
                warn=warn,
                description="off (Redis unreachable)",
            )
        return EvaluationCache(RedisStore(client), key_prefix=self.key_prefix, ttl_seconds=ttl_seconds, warn=warn)
