"""The OpenAI backend against the local OpenAI-compatible server, without Dagster: lifecycle, events,
checkpoint choice, cancel, idempotent uploads, the cost gate and the circuit breaker over real HTTP."""

from types import SimpleNamespace

import openai
import pytest

from finetune_assets.finetuning.base import TERMINAL_STATUSES, ChatExample, JobState, TrainingSpec
from finetune_assets.finetuning.openai_backend import CostLimitExceeded, OpenAIBackend
from finetune_assets.finetuning.openai_client import CircuitOpenError, OpenAIClient
from finetune_assets.settings import OpenAISettings
from finetune_assets_tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini-2024-07-18"


class Files:
    """The FileRegistry contract, in memory (the platform store's table is exercised through the assets)."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], str] = {}

    def uploaded_file(self, endpoint: str, sha256: str) -> str | None:
        return self.ids.get((endpoint, sha256))

    def remember_upload(self, *, endpoint: str, sha256: str, file_id: str, **_: object) -> None:
        self.ids[(endpoint, sha256)] = file_id


def examples(n: int, offset: int = 0) -> list[ChatExample]:
    return [
        ChatExample(
            i,
            (
                {"role": "system", "content": "You write posts."},
                {"role": "user", "content": f"Write about topic {i}"},
                {"role": "assistant", "content": f"Post number {i}: a short and lively text about topic {i}."},
            ),
        )
        for i in range(offset, offset + n)
    ]


def spec(key: str = "key-1", n: int = 30) -> TrainingSpec:
    return TrainingSpec(
        job_key=key,
        base_model=MODEL,
        train=examples(n),
        validation=examples(8, offset=1000),
        hyperparameters={"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        suffix="cycle-test",
        metadata={"partition": "2026-11-15"},
    )


def backend_for(server: FakeOpenAI, files: Files | None = None, **settings: object) -> OpenAIBackend:
    options = {"base_url": server.base_url, "max_retries": 0, **settings}
    client = OpenAIClient.from_settings(OpenAISettings.model_validate(options), server.api_key)
    return OpenAIBackend(client, files or Files(), max_tokens_per_example=1024)


def wait(backend: OpenAIBackend, job_id: str) -> JobState:
    for _ in range(50):
        state = backend.poll(job_id)
        if state.status in TERMINAL_STATUSES:
            return state
    raise AssertionError(f"job {job_id} never finished")


def test_lifecycle_streams_events_reads_the_results_and_picks_the_best_checkpoint(openai_server: FakeOpenAI) -> None:
    lines: list[str] = []
    backend = backend_for(openai_server, select_checkpoint="lowest_full_valid_loss")
    state = backend.start(spec(), progress=lines.append)
    assert state.status == "queued"
    assert wait(backend, state.job_id).status == "succeeded"
    result = backend.result(state.job_id)
    job = openai_server.jobs[state.job_id]
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 3  # cookbook default for 30 examples
    assert result.losses and result.validation_losses and result.trained_tokens == job["trained_tokens"]
    assert result.metrics["cost_usd"] == pytest.approx(job["trained_tokens"] * 3.0 / 1e6)
    checkpoints = list(backend.api.sdk.fine_tuning.jobs.checkpoints.list(state.job_id))
    best = min(checkpoints, key=lambda c: c.metrics.full_valid_loss)
    assert result.model_id == best.fine_tuned_model_checkpoint and ":ckpt-step-" in result.model_id
    assert result.metrics["best_checkpoint_full_valid_loss"] == best.metrics.full_valid_loss
    events = [line for line in lines if line.startswith(f"job {state.job_id} [")]
    assert any("The job has successfully completed" in line for line in events)
    assert len(events) == len(set(events)), "each event is logged once"
    # The chosen checkpoint serves chat completions like any model.
    assert backend.load(result.model_id).generate(
        [[{"role": "user", "content": "Write about topic 3"}]], max_new_tokens=20, seed=0
    )[0]


def test_a_cancelled_job_ends_clearly(openai_server: FakeOpenAI) -> None:
    backend = backend_for(openai_server)
    state = backend.start(spec())
    backend.cancel(state.job_id)
    backend.cancel(state.job_id)  # already terminal: nothing to do, no error
    final = backend.poll(state.job_id)
    assert final.status == "cancelled" and "cancelled at the provider" in (final.error or "")
    assert backend.result(state.job_id).model_id is None


def test_a_restarted_backend_reattaches_and_reuses_uploads_and_a_deleted_file_is_uploaded_again(
    openai_server: FakeOpenAI,
) -> None:
    files = Files()
    first = backend_for(openai_server, files).start(spec())
    again = backend_for(openai_server, files).start(spec())
    assert again.job_id == first.job_id and len(openai_server.jobs) == 1 and len(openai_server.uploads) == 2
    other = backend_for(openai_server, files).start(spec(key="key-2"))
    assert other.job_id != first.job_id and len(openai_server.uploads) == 2, "same bytes, same files"
    # Uploaded but never recorded (the process died in between): found by its name, not uploaded twice.
    assert backend_for(openai_server, Files()).start(spec(key="key-3")).job_id and len(openai_server.uploads) == 2
    for file_id in set(files.ids.values()):
        backend_for(openai_server).api.sdk.files.delete(file_id)
    backend_for(openai_server, files).start(spec(key="key-4"))
    assert len(openai_server.uploads) == 4, "a file the provider lost is uploaded again"


def test_the_backend_refuses_an_over_budget_file_before_uploading(openai_server: FakeOpenAI) -> None:
    with pytest.raises(CostLimitExceeded, match=r"exceeds openai.max_cost_usd = \$0.00; nothing was uploaded"):
        backend_for(openai_server, max_cost_usd=0.0).start(spec())
    assert openai_server.uploads == [] and openai_server.jobs == {}


def test_unknown_statuses_keep_the_job_running() -> None:
    lines: list[str] = []
    api = SimpleNamespace(settings=OpenAISettings(), redact=lambda text: text)
    backend = OpenAIBackend(api, Files())  # type: ignore[arg-type]
    backend._progress = lines.append
    job = SimpleNamespace(id="ftjob-1", status="paused", fine_tuned_model=None, error=None)
    assert backend._state_of(job).status == "running"
    assert backend._state_of(job).status == "running"
    assert lines == ["job ftjob-1: status 'paused' is not one this backend knows; still waiting"]


def test_the_circuit_breaker_fails_fast_after_consecutive_failures(openai_server: FakeOpenAI) -> None:
    backend = backend_for(openai_server, circuit_breaker_failures=3, circuit_breaker_reset_seconds=60)
    state = backend.start(spec())
    openai_server.set_faults(1.0, kinds=("503",))
    for _ in range(2):  # a transient error while polling keeps the last known state
        assert backend.poll(state.job_id).status == "queued"
    with pytest.raises(CircuitOpenError, match=r"circuit breaker open since .* after 3 consecutive failures"):
        backend.poll(state.job_id)  # the third failure opens the breaker, and the error says so
    seen = len(openai_server.requests)
    with pytest.raises(
        CircuitOpenError, match=r"3 consecutive failures \(last: InternalServerError HTTP 503"
    ) as raised:
        backend.poll(state.job_id)
    assert len(openai_server.requests) == seen, "no request once the breaker is open"
    assert backend.explain(raised.value) == str(raised.value) and openai_server.api_key not in str(raised.value)
    with pytest.raises(openai.InternalServerError):
        backend_for(openai_server).api.sdk.fine_tuning.jobs.retrieve(state.job_id)
