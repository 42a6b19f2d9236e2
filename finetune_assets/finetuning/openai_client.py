"""The OpenAI SDK client built from settings, with a circuit breaker, a chat concurrency limit and redaction.

Retries are the SDK's own (408/409/429/5xx and connection errors, honouring `retry-after-ms` /
`retry-after`, as the openai-python README documents): `max_retries` and the request timeout come from
`openai:` in the settings.
On top of them a circuit breaker fails fast once `circuit_breaker_failures` calls in a row have failed even
after those retries, so an outage costs one clear error instead of hours of retrying. Every message built
from an API error goes through `redact`: the key never reaches a log, metadata or an exception.

`openai` is imported lazily (loading the definitions must not import it).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.settings import OpenAISettings

if TYPE_CHECKING:
    import openai

T = TypeVar("T")

_KEY_PATTERN = re.compile(r"\b(sk-|sess-)[A-Za-z0-9_\-*]{6,}")
TRANSIENT_STATUS = frozenset({408, 409, 429})


class CircuitOpenError(FinetuneAssetsError, RuntimeError):
    """The API failed `threshold` times in a row: calls fail fast until the reset time has passed."""


class OpenAIConfigError(FinetuneAssetsError, RuntimeError):
    """The client cannot be built as configured (e.g. no API key); the message says what to set."""


def redact(text: str, secret: str | None = None) -> str:
    """`text` without the API key (exactly, and anything shaped like an OpenAI key)."""
    if secret:
        text = text.replace(secret, "sk-***")
    return _KEY_PATTERN.sub(r"\1***", text)


def is_transient(exc: BaseException) -> bool:
    """Connection errors, timeouts, 408/409/429 and 5xx: the service's trouble, not a bad request."""
    import openai

    if isinstance(exc, openai.APIConnectionError):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in TRANSIENT_STATUS or exc.status_code >= 500
    return False


def describe_error(exc: BaseException, secret: str | None = None) -> str:
    """One line: the exception type, HTTP status, OpenAI's code/param/message and the request id, redacted."""
    import openai

    parts = [type(exc).__name__]
    if isinstance(exc, openai.APIStatusError):
        parts.append(f"HTTP {exc.status_code}")
    if isinstance(exc, openai.APIError):
        if exc.code:
            parts.append(f"code {exc.code}")
        if exc.param:
            parts.append(f"param {exc.param}")
        message = exc.message
    else:
        message = str(exc)
    request_id = getattr(exc, "request_id", None)
    text = f"{' '.join(parts)}: {message}" + (f" (request {request_id})" if request_id else "")
    return redact(text, secret)


def api_failure_message(exc: BaseException, secret: str | None = None) -> str | None:
    """A redacted line for an OpenAI API error or an open breaker; None for anything else."""
    if isinstance(exc, (CircuitOpenError, OpenAIConfigError)):
        return redact(str(exc), secret)
    if "openai" in sys.modules:
        import openai

        if isinstance(exc, openai.OpenAIError):
            return f"OpenAI API: {describe_error(exc, secret)}"
    return None


def _utc_second(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class CircuitBreaker:
    """Counts consecutive transient failures; at `threshold` it opens for `reset_after_s`, then lets one try."""

    def __init__(
        self,
        threshold: int,
        reset_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.threshold = threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._opened_wall = 0.0
        self._last_error = ""

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_locked()

    def _open_locked(self) -> bool:
        if self._opened_at is None:
            return False
        if self._clock() - self._opened_at >= self.reset_after_s:
            self._opened_at = None  # half-open: the next call decides
            self._failures = self.threshold - 1
            return False
        return True

    def _open_message_locked(self) -> str:
        """What an operator needs to tell a dead endpoint from one bad call: open since when, after how many
        failures, the last one, and when the next call will be let through."""
        assert self._opened_at is not None
        wait = max(0.0, self.reset_after_s - (self._clock() - self._opened_at))
        return (
            f"OpenAI API: circuit breaker open since {_utc_second(self._opened_wall)} after {self._failures} "
            f"consecutive failures (last: {self._last_error}); failing fast for another {wait:.0f} s, next try at "
            f"{_utc_second(self._opened_wall + self.reset_after_s)} (openai.circuit_breaker_failures = "
            f"{self.threshold}, openai.circuit_breaker_reset_seconds = {self.reset_after_s:g})"
        )

    def before_call(self) -> None:
        with self._lock:
            if self._open_locked():
                raise CircuitOpenError(self._open_message_locked())

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None

    def record_failure(self, description: str) -> str | None:
        """Count a transient failure; the breaker's open message when this failure opened it, else None."""
        with self._lock:
            self._failures += 1
            self._last_error = description
            if self._failures < self.threshold:
                return None
            self._opened_at = self._clock()
            self._opened_wall = self._wall_clock()
            return self._open_message_locked()

    def call(self, fn: Callable[[], T], describe: Callable[[BaseException], str] = str) -> T:
        """Run `fn` unless open; transient failures count toward opening, anything else passes through.

        The failure that opens the breaker already raises `CircuitOpenError` (its cause chained), so the
        step fails saying the breaker opened rather than naming one more HTTP status.
        """
        self.before_call()
        try:
            result = fn()
        except Exception as exc:
            opened = self.record_failure(describe(exc)) if is_transient(exc) else None
            if opened is not None:
                raise CircuitOpenError(opened) from exc
            raise
        self.record_success()
        return result


def build_sdk_client(settings: OpenAISettings, api_key: str) -> openai.OpenAI:
    """An `OpenAI` client, or `AzureOpenAI` when `azure_endpoint` is set, with timeouts and retries."""
    import openai

    timeout = openai.Timeout(settings.request_timeout_seconds, connect=min(10.0, settings.request_timeout_seconds))
    if settings.azure_endpoint:
        return openai.AzureOpenAI(
            api_key=api_key,
            azure_endpoint=settings.azure_endpoint,
            api_version=settings.api_version,
            timeout=timeout,
            max_retries=settings.max_retries,
        )
    kwargs: dict[str, Any] = {"api_key": api_key, "timeout": timeout, "max_retries": settings.max_retries}
    if settings.base_url:
        kwargs["base_url"] = settings.base_url
    return openai.OpenAI(**kwargs)


class OpenAIClient:
    """The SDK client plus the breaker, the chat concurrency limit and redaction: one per backend."""

    def __init__(self, sdk: openai.OpenAI, settings: OpenAISettings, api_key: str | None = None) -> None:
        self.sdk = sdk
        self.settings = settings
        self._secret = api_key
        self.breaker = CircuitBreaker(settings.circuit_breaker_failures, settings.circuit_breaker_reset_seconds)
        self.chat_slots = threading.BoundedSemaphore(settings.chat_concurrency)

    @classmethod
    def from_settings(cls, settings: OpenAISettings, api_key: str | None) -> OpenAIClient:
        if not api_key:
            raise OpenAIConfigError(
                "OPENAI_API_KEY is not set: the openai backend and the LLM judge read the API key from the "
                "environment only (a Kubernetes Secret in production; see the README)"
            )
        return cls(build_sdk_client(settings, api_key), settings, api_key)

    @property
    def endpoint(self) -> str:
        """Where files live: uploaded file ids are only valid at the endpoint that issued them."""
        if self.settings.azure_endpoint:
            return self.settings.azure_endpoint.rstrip("/")
        return str(self.sdk.base_url).rstrip("/")

    @property
    def secret(self) -> str | None:
        return self._secret

    def redact(self, text: str) -> str:
        return redact(text, self._secret)

    def describe(self, exc: BaseException) -> str:
        return describe_error(exc, self._secret)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` (an SDK method) behind the circuit breaker."""
        return self.breaker.call(lambda: fn(*args, **kwargs), self.describe)

    def chat(
        self,
        model: str,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int,
        seed: int | None = None,
        temperature: float | None = None,
    ) -> str:
        """One chat completion's text; at most `chat_concurrency` are in flight at once per client."""
        options: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "max_completion_tokens": max_tokens,
            "temperature": self.settings.temperature if temperature is None else temperature,
        }
        if seed is not None:
            options["seed"] = seed
        with self.chat_slots:
            response = self.call(self.sdk.chat.completions.create, **options)
        return (response.choices[0].message.content or "").strip()
