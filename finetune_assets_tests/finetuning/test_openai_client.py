"""The client built from settings (OpenAI and Azure OpenAI), the circuit breaker and redaction."""

from datetime import UTC, datetime

import httpx2
import openai
import pytest

from finetune_assets.finetuning.openai_client import (
    CircuitBreaker,
    CircuitOpenError,
    OpenAIClient,
    OpenAIConfigError,
    build_sdk_client,
    describe_error,
    redact,
)
from finetune_assets.settings import OpenAISettings

REQUEST = httpx2.Request("GET", "http://127.0.0.1/v1/fine_tuning/jobs")


def status_error(status: int) -> openai.APIStatusError:
    response = httpx2.Response(status, request=REQUEST, headers={"x-request-id": "req_1"})
    body = {"message": "boom", "type": "server_error", "param": None, "code": "oops"}
    cls = {400: openai.BadRequestError, 429: openai.RateLimitError, 500: openai.InternalServerError}[status]
    return cls("boom", response=response, body=body)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_n_consecutive_transient_failures_and_fails_fast() -> None:
    clock = Clock()
    epoch = datetime(2026, 12, 8, 9, 0, tzinfo=UTC).timestamp()
    breaker = CircuitBreaker(threshold=3, reset_after_s=60, clock=clock, wall_clock=lambda: epoch + clock.now)
    calls = []

    def failing() -> None:
        calls.append(1)
        raise status_error(500)

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            breaker.call(failing)
    clock.now = 5
    with pytest.raises(CircuitOpenError, match="circuit breaker open since 2026-12-08 09:00:05 UTC") as opened:
        breaker.call(failing)  # the failure that opens it says so, not just one more HTTP 500
    assert isinstance(opened.value.__cause__, openai.InternalServerError)
    assert breaker.is_open
    clock.now = 20
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(failing)
    assert "after 3 consecutive failures (last: " in str(refused.value)
    assert "failing fast for another 45 s, next try at 2026-12-08 09:01:05 UTC" in str(refused.value)
    assert "circuit_breaker_failures = 3, openai.circuit_breaker_reset_seconds = 60" in str(refused.value)
    assert len(calls) == 3, "an open breaker does not call"

    clock.now = 66  # half-open: one try; its failure opens it again at once
    with pytest.raises(CircuitOpenError, match="open since 2026-12-08 09:01:06 UTC"):
        breaker.call(failing)
    assert breaker.is_open and len(calls) == 4
    clock.now = 127
    assert breaker.call(lambda: "ok") == "ok"
    assert not breaker.is_open and breaker.consecutive_failures == 0


def test_a_success_resets_the_count_and_client_errors_do_not_count() -> None:
    breaker = CircuitBreaker(threshold=2, reset_after_s=60)
    with pytest.raises(openai.RateLimitError):
        breaker.call(lambda: (_ for _ in ()).throw(status_error(429)))
    breaker.call(lambda: None)
    with pytest.raises(openai.RateLimitError):
        breaker.call(lambda: (_ for _ in ()).throw(status_error(429)))
    assert not breaker.is_open
    for _ in range(5):
        with pytest.raises(openai.BadRequestError):
            breaker.call(lambda: (_ for _ in ()).throw(status_error(400)))
    assert not breaker.is_open and breaker.consecutive_failures == 1


def test_redaction_removes_the_key_and_anything_shaped_like_one() -> None:
    key = "sk-test-0123456789abcdef"
    assert key not in redact(f"Incorrect API key provided: {key}.", key)
    assert "sk-proj-abcdefghijkl" not in redact("key sk-proj-abcdefghijkl leaked")
    text = describe_error(status_error(500), key)
    assert text == "InternalServerError HTTP 500 code oops: boom (request req_1)"


def test_client_from_settings_openai_and_azure() -> None:
    settings = OpenAISettings(base_url="http://127.0.0.1:9/v1", max_retries=7, request_timeout_seconds=42)
    client = build_sdk_client(settings, "sk-test-key")
    assert isinstance(client, openai.OpenAI) and not isinstance(client, openai.AzureOpenAI)
    assert str(client.base_url) == "http://127.0.0.1:9/v1/"
    assert client.max_retries == 7 and client.timeout.read == 42

    azure = OpenAISettings(azure_endpoint="https://example.openai.azure.com", api_version="2024-10-21")
    az = build_sdk_client(azure, "azure-key")
    assert isinstance(az, openai.AzureOpenAI)
    assert str(az.base_url).startswith("https://example.openai.azure.com/openai")
    assert az._custom_query == {"api-version": "2024-10-21"}
    assert OpenAIClient(az, azure, "azure-key").endpoint == "https://example.openai.azure.com"


def test_no_key_is_one_clear_error_naming_the_variable() -> None:
    with pytest.raises(OpenAIConfigError, match="OPENAI_API_KEY is not set"):
        OpenAIClient.from_settings(OpenAISettings(), None)
