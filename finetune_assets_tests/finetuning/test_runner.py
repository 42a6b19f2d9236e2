"""The fine-tuning runner: one code path for every backend; the profile, not the asset, holds the differences."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from finetune_assets.finetuning.base import JobState, JobStatus, TrainingResult, TrainingSpec
from finetune_assets.finetuning.local_model import LocalBackendError
from finetune_assets.finetuning.openai_client import CircuitOpenError
from finetune_assets.finetuning.runner import (
    BackendProfile,
    FineTuneRunner,
    WaitPolicy,
    backend_errors,
    backend_profile,
    base_model_identity,
)
from finetune_assets.settings import parse_settings

SPEC = TrainingSpec(
    job_key="k" * 64, base_model="base", train=[], validation=[], hyperparameters={"n_epochs": 1}, suffix="s"
)


class ScriptedBackend:
    """A backend that reports the statuses it is given, one per poll; `start` may raise instead."""

    name = "scripted"

    def __init__(self, statuses: list[JobStatus], fail_with: Exception | None = None) -> None:
        self.statuses = statuses
        self.fail_with = fail_with
        self.calls: list[str] = []

    def start(self, spec: TrainingSpec, progress: Callable[[str], None] | None = None) -> JobState:
        self.calls.append("start")
        if self.fail_with is not None:
            raise self.fail_with
        return JobState(job_id="job-1", status="queued")

    def poll(self, job_id: str) -> JobState:
        self.calls.append("poll")
        return JobState(job_id=job_id, status=self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0])

    def result(self, job_id: str) -> TrainingResult:
        self.calls.append("result")
        status = self.statuses[-1]
        return TrainingResult(
            job_id=job_id,
            status=status,
            model_id="ft:base:s:job-1" if status == "succeeded" else None,
            base_model="base",
            losses=[(1, 2.0)],
            validation_losses=[],
            trained_tokens=10,
            metrics={"cost_usd": 0.25, "steps": 1.0},
            error=None if status == "succeeded" else "invalid_file: line 3",
        )

    def cancel(self, job_id: str) -> None: ...

    def load(self, model_id: str) -> object:
        raise AssertionError("not used")


def profile(*, fails_step: bool) -> BackendProfile:
    return BackendProfile(
        hyperparameters={"n_epochs": 1},
        wait=WaitPolicy(deadline_s=60, poll_seconds=0.001),
        failed_job_fails_step=fails_step,
    )


def test_run_starts_waits_until_the_job_ends_and_returns_its_result() -> None:
    backend = ScriptedBackend(["running", "running", "succeeded"])
    lines: list[str] = []
    result = FineTuneRunner(backend, profile(fails_step=True)).run(SPEC, lines.append)  # type: ignore[arg-type]
    assert result.status == "succeeded" and result.model_id == "ft:base:s:job-1"
    assert backend.calls == ["start", "poll", "poll", "poll", "result"]
    assert any("job-1: succeeded" in line for line in lines), lines


def test_a_backend_error_is_one_clear_failure_and_a_bug_keeps_its_traceback() -> None:
    refused = ScriptedBackend(["succeeded"], fail_with=LocalBackendError("unknown model 'x': expected a checkpoint"))
    with pytest.raises(dg.Failure, match="unknown model 'x'"):
        FineTuneRunner(refused, profile(fails_step=False)).run(SPEC, print)  # type: ignore[arg-type]
    breaker = ScriptedBackend(["succeeded"], fail_with=CircuitOpenError("circuit open for 30 s"))
    with pytest.raises(dg.Failure, match="circuit open"):
        FineTuneRunner(breaker, profile(fails_step=True)).run(SPEC, print)  # type: ignore[arg-type]
    with pytest.raises(KeyError), backend_errors(refused):  # type: ignore[arg-type]
        raise KeyError("a bug")


@pytest.mark.parametrize("fails_step", [True, False])
def test_a_failed_job_fails_the_step_only_where_the_profile_says(fails_step: bool) -> None:
    backend = ScriptedBackend(["failed"])
    runner = FineTuneRunner(backend, profile(fails_step=fails_step))  # type: ignore[arg-type]
    result = runner.run(SPEC, print)
    assert result.status == "failed"
    if fails_step:
        with pytest.raises(dg.Failure, match="job-1 failed: invalid_file: line 3"):
            runner.raise_if_failed(result)
    else:
        runner.raise_if_failed(result)  # materialized: the blocking job_succeeded check says why


def test_metadata_names_the_backend_and_carries_cost_only_where_billed() -> None:
    runner = FineTuneRunner(ScriptedBackend(["succeeded"]), profile(fails_step=True))  # type: ignore[arg-type]
    billed = runner.run(SPEC, print)
    metadata = runner.metadata(billed)
    assert metadata["cost_usd"] == 0.25 and set(metadata) == {"cost_usd", "scripted_metrics", "hyperparameters"}
    unbilled = TrainingResult(**{**billed.__dict__, "metrics": {"steps": 1.0}})
    assert "cost_usd" not in runner.metadata(unbilled)


def test_each_backend_gets_its_own_hyperparameters_and_wait_policy() -> None:
    local = backend_profile(parse_settings({}, source="c.yaml", environ={}))
    openai = backend_profile(
        parse_settings(
            {"backend": "openai", "base_model": "gpt-4o-mini-2024-07-18", "openai": {"poll_interval_seconds": 30}},
            source="c.yaml",
            environ={},
        )
    )
    assert "learning_rate" in local.hyperparameters and not local.failed_job_fails_step
    assert openai.wait.poll_seconds == 30 and openai.wait.backoff > 1 and openai.failed_job_fails_step
    assert set(openai.hyperparameters) != set(local.hyperparameters)


def test_only_the_demo_base_model_is_built_and_a_real_one_is_its_own_identity(tmp_path: Path) -> None:
    asked: list[str] = []

    def posts() -> list[tuple[str, str]]:
        asked.append("posts")
        return []

    real = parse_settings({"base_model": str(tmp_path)}, source="c.yaml", environ={})
    assert base_model_identity(real, posts, print) == str(tmp_path)
    remote = parse_settings({"backend": "openai", "base_model": "gpt-4o-mini-2024-07-18"}, source="c.yaml", environ={})
    assert base_model_identity(remote, posts, print) == "gpt-4o-mini-2024-07-18"
    assert asked == [], "no corpus is read unless the demo base model must be built"
