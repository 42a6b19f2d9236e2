"""One way to run a fine-tuning job whatever the backend: start or re-attach, wait, fetch, log, fail clearly.

`fine_tuned_model` calls `FineTuneRunner.run` once and never asks which backend it has. What differs
between backends (which hyperparameters apply, how long to wait and how often to poll, whether a failed
job fails the step) is a `BackendProfile`, chosen once in `runner_for`; the backends themselves are built
by `finetuning.make_backend`. This is the seam between Dagster and the backends, so it imports Dagster:
a backend's error becomes one `dg.Failure` with the key redacted, a bug keeps its traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.finetuning.base import TERMINAL_STATUSES, FineTuningBackend, TrainingResult, TrainingSpec
from finetune_assets.reporting.progress import Say, format_duration

if TYPE_CHECKING:
    from finetune_assets.finetuning.openai_client import OpenAIClient
    from finetune_assets.finetuning.openai_files import FileRegistry
    from finetune_assets.settings import Settings

POLL_SECONDS = 15.0
LOCAL_DEADLINE_S = 24 * 3600.0
MLFLOW_BATCH_LIMIT = 1000
"""MLflow's `log_batch` takes at most 1000 metrics per call."""


@dataclass(frozen=True)
class WaitPolicy:
    """How long a job may take and how often to ask: each wait is `backoff` times the last, up to the max."""

    deadline_s: float
    poll_seconds: float = POLL_SECONDS
    backoff: float = 1.0
    max_poll_seconds: float | None = None


@dataclass(frozen=True)
class BackendProfile:
    """What the runner does differently per backend, decided once from the settings."""

    hyperparameters: dict[str, Any]
    wait: WaitPolicy
    failed_job_fails_step: bool
    """True where the provider's error (code, message, param) is the user's to read: the step fails with it.
    False for the local trainer, whose failed job is materialized so its blocking checks say why."""


def wait_for(
    backend: FineTuningBackend,
    job_id: str,
    say: Say,
    deadline_s: float,
    poll_seconds: float = POLL_SECONDS,
    backoff: float = 1.0,
    max_poll_seconds: float | None = None,
) -> None:
    """Poll a job until it ends, saying each time how long it has run and how long the deadline leaves.

    At the deadline the job is left running: a rerun re-attaches to it.
    """
    started = time.monotonic()
    state = backend.poll(job_id)
    polls = 1
    while state.status not in TERMINAL_STATUSES:
        elapsed = time.monotonic() - started
        if elapsed > deadline_s:
            raise dg.Failure(
                f"fine-tuning job {job_id} still {state.status} after {deadline_s:.0f} s; it keeps running at the "
                "provider, and materializing fine_tuned_model again re-attaches to it"
            )
        time.sleep(poll_seconds)
        state = backend.poll(job_id)
        polls += 1
        elapsed = time.monotonic() - started
        say(
            f"job {job_id}: {state.status} after {format_duration(elapsed)} (poll {polls}, every "
            f"{format_duration(poll_seconds)}; gives up in {format_duration(deadline_s - elapsed)})"
        )
        poll_seconds = min(poll_seconds * backoff, max_poll_seconds or math.inf)


def log_curves(
    run_id: str,
    losses: list[tuple[int, float]],
    validation_losses: list[tuple[int, float]],
    chunk: int = MLFLOW_BATCH_LIMIT,
) -> None:
    """`train_loss` and `validation_loss` per step into an MLflow run, batched: a remote job has thousands."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", v, now, s) for s, v in losses]
    metrics += [Metric("validation_loss", v, now, s) for s, v in validation_losses]
    client = MlflowClient()
    for first in range(0, len(metrics), chunk):
        client.log_batch(run_id, metrics=metrics[first : first + chunk])


def backend_failure(backend: FineTuningBackend, exc: BaseException) -> dg.Failure | None:
    """A user-facing `dg.Failure` for what a backend raised (API error, cost gate, open breaker, a model that
    cannot be loaded), with the key redacted; None for anything else (a bug: its traceback is wanted)."""
    from finetune_assets.finetuning.openai_client import api_failure_message

    explain = getattr(backend, "explain", None)
    message = explain(exc) if explain is not None else None
    if message is None:  # e.g. the judge's client next to a local backend
        message = api_failure_message(exc)
    if message is None and isinstance(exc, FinetuneAssetsError):  # the package's own errors say what to change
        message = str(exc)
    return dg.Failure(description=message) if message is not None else None


@contextlib.contextmanager
def backend_errors(backend: FineTuningBackend) -> Iterator[None]:
    """Inside this block a backend's (or the OpenAI client's) error becomes one clear `dg.Failure`."""
    try:
        yield
    except Exception as exc:
        failure = backend_failure(backend, exc)
        if failure is None:
            raise
        raise failure from None


@dataclass(frozen=True)
class FineTuneRunner:
    """A backend and its profile: everything `fine_tuned_model` needs to train, whichever backend it is."""

    backend: FineTuningBackend
    profile: BackendProfile

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return self.profile.hyperparameters

    def run(self, spec: TrainingSpec, say: Say) -> TrainingResult:
        """Start the job for `spec` (or re-attach to it), wait until it ends and return its result."""
        wait = self.profile.wait
        with backend_errors(self.backend):
            state = self.backend.start(spec, progress=say)
            wait_for(
                self.backend,
                state.job_id,
                say,
                deadline_s=wait.deadline_s,
                poll_seconds=wait.poll_seconds,
                backoff=wait.backoff,
                max_poll_seconds=wait.max_poll_seconds,
            )
            return self.backend.result(state.job_id)

    def log_result(self, mlflow_run: Any, result: TrainingResult) -> None:
        """Curves, the adapter (where the job left one on disk) and the job's finite scalar metrics."""
        log_curves(mlflow_run.active_run().info.run_id, result.losses, result.validation_losses)
        if result.artifact_uri and Path(result.artifact_uri).is_dir():
            mlflow_run.log_artifacts(result.artifact_uri, artifact_path="adapter")
        mlflow_run.log_metrics({k: v for k, v in result.metrics.items() if math.isfinite(v)})

    def metadata(self, result: TrainingResult) -> dict[str, Any]:
        """The job's own figures for the materialization: cost where the provider bills, its metrics, the
        hyperparameters it ran with."""
        cost = {"cost_usd": result.metrics["cost_usd"]} if "cost_usd" in result.metrics else {}
        return {
            **cost,
            f"{self.backend.name}_metrics": dg.MetadataValue.json(result.metrics),
            "hyperparameters": dg.MetadataValue.json(self.hyperparameters),
        }

    def raise_if_failed(self, result: TrainingResult) -> None:
        """A failed provider job fails the step with the provider's own words; nothing downstream runs."""
        if self.profile.failed_job_fails_step and result.status != "succeeded":
            raise dg.Failure(
                description=f"fine-tuning job {result.job_id} {result.status}: {result.error}",
                metadata={"job_id": result.job_id, "status": result.status, "error": result.error or ""},
            )


def backend_profile(settings: Settings) -> BackendProfile:
    """The profile of the configured backend (`settings.backend` is validated to one of these; building both is
    two small records)."""
    openai = settings.openai
    profiles = {
        "local": BackendProfile(
            hyperparameters=settings.training.model_dump(),
            wait=WaitPolicy(deadline_s=LOCAL_DEADLINE_S),
            failed_job_fails_step=False,
        ),
        "openai": BackendProfile(
            hyperparameters=openai.hyperparameters.model_dump(),
            wait=WaitPolicy(
                deadline_s=openai.job_deadline_hours * 3600,
                poll_seconds=openai.poll_interval_seconds,
                backoff=openai.poll_backoff,
                max_poll_seconds=openai.max_poll_interval_seconds,
            ),
            failed_job_fails_step=True,
        ),
    }
    return profiles[settings.backend]


def backend_for(
    settings: Settings, files: FileRegistry, openai_client: Callable[[], OpenAIClient]
) -> FineTuningBackend:
    """The configured backend; `openai_client` is called only by a backend that needs the key.

    A backend that cannot be built here (no key, an unknown name) is one `dg.Failure` saying what to change.
    """
    from finetune_assets.finetuning import BackendUnavailable, make_backend
    from finetune_assets.finetuning.openai_client import OpenAIConfigError

    try:
        return make_backend(
            settings.backend,
            settings.resolved_state_dir(),
            settings=settings,
            openai_client=openai_client,
            files=files,
        )
    except (BackendUnavailable, OpenAIConfigError) as exc:
        raise dg.Failure(description=str(exc)) from None


def runner_for(settings: Settings, files: FileRegistry, openai_client: Callable[[], OpenAIClient]) -> FineTuneRunner:
    """The runner for the configured backend (see `backend_for`)."""
    return FineTuneRunner(backend_for(settings, files, openai_client), backend_profile(settings))


def base_model_identity(settings: Settings, pretraining_posts: Callable[[], list[tuple[str, str]]], say: Say) -> str:
    """The base model's identity for the job key, building the demo base model first where it is configured.

    The demo model is trained once from the corpus (no model hub here); a real checkpoint or a provider's
    model is used as is. A rebuilt demo model must never re-attach to a job trained on its predecessor, so
    its identity includes a hash of its marker file.
    """
    from finetune_assets.finetuning.demo_base_model import DEMO_BASE_MODEL

    if settings.backend != "local" or settings.base_model != DEMO_BASE_MODEL:
        return settings.base_model
    from finetune_assets.finetuning.dataset import parse_prompt
    from finetune_assets.finetuning.demo_base_model import (
        MARKER_FILE,
        ensure_demo_base_model,
        format_chat_for_pretraining,
    )

    texts = []
    for raw_prompt, completion in pretraining_posts():
        prompt = parse_prompt(raw_prompt)
        if isinstance(prompt, list) and completion.strip():
            texts.append(format_chat_for_pretraining([*prompt, {"role": "assistant", "content": completion}]))
    built = ensure_demo_base_model(
        texts,
        settings.resolved_state_dir() / "base_models" / DEMO_BASE_MODEL,
        seed=settings.training.seed,
        progress=say,
    )
    return f"{DEMO_BASE_MODEL}@{hashlib.sha256((built / MARKER_FILE).read_bytes()).hexdigest()[:16]}"
