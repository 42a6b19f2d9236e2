"""The OpenAI fine-tuning backend (also Azure OpenAI); the models it serves are `openai_model.OpenAITextModel`.

`start` never pays twice: it first looks for a job carrying the spec's `job_key` in its metadata
(paginated `jobs.list`) and re-attaches to it; otherwise it checks the training file (cookbook format checks
and the cost gate, before any upload), uploads each file once per content hash (hash -> file id kept in
the platform store, so a rerun reuses it) and creates the job with `method.supervised.hyperparameters`,
`suffix`, `seed` and metadata (job key, training file hash, partition, config hash). Creates are retried by
`openai_creates.create_once`, which looks for what a lost answer left behind before every retry; a duplicate
that slipped through anyway is cancelled (job) or deleted (file) and reported. `poll` streams the job's events
into the progress callback and tolerates transient errors and unknown statuses; `result` reads the results
CSV (raw or base64, parsed in `openai_files`) and, optionally, picks the checkpoint with the lowest
`full_valid_loss`. The API it follows: https://platform.openai.com/docs/api-reference/fine-tuning
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from finetune_assets.finetuning.base import (
    JobState,
    JobStatus,
    ProgressCallback,
    TrainingResult,
    TrainingSpec,
)
from finetune_assets.finetuning.openai_client import CircuitOpenError, OpenAIClient, api_failure_message, is_transient
from finetune_assets.finetuning.openai_creates import (
    create_through_breaker,
    keeper_of,
    oldest_file,
    settle_files,
    settle_jobs,
    with_object,
)
from finetune_assets.finetuning.openai_files import (
    FileRegistry,
    OpenAIBackendError,
    ResultsCurve,
    disjoint_validation,
    format_job_error,
    jsonl_bytes,
    parse_results_csv,
)
from finetune_assets.finetuning.openai_model import OpenAITextModel
from finetune_assets.finetuning.tokens import Preflight, preflight, price_per_million
from finetune_assets.settings import OpenAISettings

JOB_KEY = "finetune_job_key"
"""The metadata key a job is found by on re-attach."""
STATUS_MAP: dict[str, JobStatus] = {
    "validating_files": "queued",
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
MAX_METADATA_KEYS = 16


class CostLimitExceeded(OpenAIBackendError):
    """The estimated cost is above `openai.max_cost_usd`; nothing was uploaded."""


METRICS_LINES_PER_JOB = 20


def _worth_logging(event: Any) -> bool:
    """Every message event; of the per-step metrics events about `METRICS_LINES_PER_JOB` (and the last step),
    so a job of thousands of steps does not flood the run log."""
    data = getattr(event, "data", None)
    if getattr(event, "type", None) != "metrics" or not isinstance(data, dict):
        return True
    step, total = data.get("step"), data.get("total_steps")
    if not isinstance(step, int) or not isinstance(total, int) or total <= 0:
        return True
    return step == total or step % max(1, total // METRICS_LINES_PER_JOB) == 0


def _last(series: list[tuple[int, float]]) -> float | None:
    return series[-1][1] if series else None


class OpenAIBackend:
    """`FineTuningBackend` over the OpenAI fine-tuning API; see the module docstring for the guarantees."""

    name = "openai"

    def __init__(
        self,
        api: OpenAIClient,
        files: FileRegistry,
        *,
        max_tokens_per_example: int | None = None,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.settings: OpenAISettings = api.settings
        self.files = files
        self.max_tokens_per_example = max_tokens_per_example
        self.seed = seed
        self._progress: ProgressCallback | None = None
        self._seen_events: dict[str, set[str]] = {}
        self._last_state: dict[str, JobState] = {}
        self._unknown_reported: set[tuple[str, str]] = set()
        self.last_preflight: Preflight | None = None
        self._sleep = sleep
        self.duplicates_cancelled: dict[str, list[str]] = {}  # job key -> duplicate job ids this backend cancelled

    # -- preparing -------------------------------------------------------------------------------------------

    def preflight(self, spec: TrainingSpec) -> Preflight:
        """Format, tokens, epochs and the estimated cost of the training file, as `start` would send it."""
        lines = [{"messages": list(e.messages)} for e in spec.train]
        return preflight(
            lines,
            spec.base_model,
            prices=self.settings.training_price_per_million_tokens,
            n_epochs=spec.hyperparameters.get("n_epochs", "auto"),
            max_tokens_per_example=self.max_tokens_per_example,
        )

    def check_before_upload(self, report: Preflight) -> None:
        """The blocking gate: well-formed, within the token limit, priced and within `max_cost_usd`."""
        if not report.format_ok:
            failing = {k: v for k, v in report.format_errors.items() if v}
            raise OpenAIBackendError(f"training file fails OpenAI's chat format checks: {failing}")
        if report.n_over_limit:
            raise OpenAIBackendError(
                f"{report.n_over_limit} training examples exceed {report.token_limit} tokens ({report.encoding})"
            )
        if report.estimated_cost_usd is None:
            raise CostLimitExceeded(
                f"no price for {report.model} in openai.training_price_per_million_tokens: the cost cannot be "
                "checked, so nothing is uploaded"
            )
        if report.estimated_cost_usd > self.settings.max_cost_usd:
            raise CostLimitExceeded(
                f"estimated cost ${report.estimated_cost_usd:.2f} ({report.billing_tokens:,} billing tokens x "
                f"{report.n_epochs} epochs x ${report.price_per_million}/1M) exceeds openai.max_cost_usd = "
                f"${self.settings.max_cost_usd:.2f}; nothing was uploaded"
            )

    def explain(self, exc: BaseException) -> str | None:
        """One redacted line for an error a person must act on (API error, gate, open breaker), else None."""
        if isinstance(exc, OpenAIBackendError):
            return self.api.redact(str(exc))
        return api_failure_message(exc, self.api.secret)

    def _say(self, line: str) -> None:
        if self._progress is not None:
            self._progress(self.api.redact(line))

    def _create(self, what: str, create: Callable[[Any], Any], find: Callable[[], Any | None]) -> Any:
        """`create(sdk)` with an SDK client that never retries: `create_once` retries, after a lookup."""
        sdk, attempts = self.api.sdk.with_options(max_retries=0), self.settings.max_retries + 1
        return create_through_breaker(
            self.api, what, lambda: create(sdk), find, attempts, sleep=self._sleep, say=self._say
        )

    def _settle_jobs(self, job_key: str, alive: list[Any], keep: str | None = None) -> Any:
        chosen, cancelled = settle_jobs(self.api, alive, say=self._say, keep=keep)
        self.duplicates_cancelled.setdefault(job_key, []).extend(cancelled)
        return chosen

    def _upload(self, data: bytes, role: str) -> str:
        """The file id for these bytes: remembered, found by name (a crash after uploading), or uploaded now."""
        import openai

        sha = hashlib.sha256(data).hexdigest()
        endpoint = self.api.endpoint
        known = self.files.uploaded_file(endpoint, sha)
        if known is not None:
            try:
                self.api.call(self.api.sdk.files.retrieve, known)
                self._say(f"{role} file {sha[:12]}: already uploaded as {known}")
                return known
            except openai.NotFoundError:
                self._say(f"{role} file {sha[:12]}: {known} is gone at the provider; uploading again")
        filename, what = f"finetune-assets-{sha}.jsonl", f"{role} file {sha[:12]}"
        named = self._files_named(filename)
        if named:
            self._say(f"{what}: found earlier upload {oldest_file(named).id}")
        else:
            uploaded = self._create(
                f"{what} upload",
                lambda sdk: sdk.files.create(file=(filename, data, "application/jsonl"), purpose="fine-tune"),
                lambda: self._find_file(filename),
            )
            self._say(f"{what}: uploaded {len(data):,} bytes as {uploaded.id}")
            named = with_object(self._files_named(filename), uploaded)  # a duplicate may have slipped through
        found = settle_files(self.api, what, say=self._say, named=named)
        self.files.remember_upload(
            endpoint=endpoint, sha256=sha, file_id=found, purpose="fine-tune", n_bytes=len(data), filename=filename
        )
        return found

    def _files_named(self, filename: str) -> list[Any]:
        """Uploads of the same content under our name (the name carries the hash), oldest first."""
        page = self.api.call(self.api.sdk.files.list, purpose="fine-tune", limit=100)
        named = [item for item in page if item.filename == filename and getattr(item, "status", None) != "error"]
        return sorted(named, key=lambda item: (item.created_at, item.id))

    def _find_file(self, filename: str) -> Any | None:
        """An earlier upload of the same content that was not recorded (a crash or a lost answer after it)."""
        return oldest_file(named) if (named := self._files_named(filename)) else None

    def _jobs_for(self, job_key: str, *, quiet: bool = False) -> list[Any]:
        """The live jobs (not failed or cancelled) carrying this key (paginated `jobs.list`)."""
        page = self.api.call(self.api.sdk.fine_tuning.jobs.list, metadata={JOB_KEY: job_key}, limit=100)
        matching = [job for job in page if (job.metadata or {}).get(JOB_KEY) == job_key]
        alive = [job for job in matching if job.status not in ("failed", "cancelled")]
        if matching and not alive and not quiet:
            self._say(
                f"{len(matching)} earlier job(s) for this key ended {sorted({j.status for j in matching})}: "
                "starting a new one"
            )
        return alive

    def find_job(self, job_key: str) -> Any | None:
        """The live job with this key to re-attach to (`keeper_of`: furthest along, then oldest), if any."""
        alive = self._jobs_for(job_key, quiet=True)
        return keeper_of(alive) if alive else None

    def _metadata(self, spec: TrainingSpec, training_sha: str) -> dict[str, str]:
        metadata = {JOB_KEY: spec.job_key, "training_file_sha256": training_sha}
        for key, value in spec.metadata.items():
            if len(metadata) < MAX_METADATA_KEYS:
                metadata.setdefault(key[:64], str(value)[:512])
        return metadata

    # -- the protocol ----------------------------------------------------------------------------------------

    def start(self, spec: TrainingSpec, progress: ProgressCallback | None = None) -> JobState:
        self._progress = progress
        alive = self._jobs_for(spec.job_key)
        if alive:
            existing = self._settle_jobs(spec.job_key, alive)
            self._say(f"re-attached to fine-tuning job {existing.id} ({existing.status}) for this dataset and config")
            return self._state_of(existing)
        report = self.preflight(spec)
        self.last_preflight = report
        self._say(
            f"training file: {report.n_examples} examples, {report.billing_tokens:,} billing tokens "
            f"({report.encoding}), {report.n_epochs} epochs, estimated ${report.estimated_cost_usd or 0:.4f} "
            f"(limit ${self.settings.max_cost_usd:.2f})"
        )
        self.check_before_upload(report)
        validation, dropped = disjoint_validation(spec.train, spec.validation)
        if dropped:
            self._say(f"validation: dropped {dropped} examples whose content is also in the training file")
        train_bytes = jsonl_bytes(spec.train)
        training_file = self._upload(train_bytes, "training")
        validation_file = self._upload(jsonl_bytes(validation), "validation") if validation else None
        hyperparameters: dict[str, Any] = {**spec.hyperparameters, "n_epochs": report.n_epochs}
        params: dict[str, Any] = {
            "model": spec.base_model,
            "training_file": training_file,
            **({"validation_file": validation_file} if validation_file else {}),
            "suffix": spec.suffix[:64],
            "seed": self.seed,
            "metadata": self._metadata(spec, hashlib.sha256(train_bytes).hexdigest()),
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        }
        job = self._create(
            "fine-tuning job create",
            lambda sdk: sdk.fine_tuning.jobs.create(**params),
            lambda: self.find_job(spec.job_key),
        )
        self._say(f"created fine-tuning job {job.id} ({job.status}) on {spec.base_model}")
        alive = with_object(self._jobs_for(spec.job_key, quiet=True), job)  # a duplicate may have slipped through
        return self._state_of(self._settle_jobs(spec.job_key, alive))

    def poll(self, job_id: str) -> JobState:
        """The job's state; a transient error (after the SDK's retries) keeps the last known state."""
        try:
            job = self.api.call(self.api.sdk.fine_tuning.jobs.retrieve, job_id)
        except CircuitOpenError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._say(f"job {job_id}: poll failed ({self.api.describe(exc)}); trying again at the next poll")
            return self._last_state.get(job_id) or JobState(job_id=job_id, status="running")
        self._stream_events(job_id)
        return self._state_of(job)

    def _stream_events(self, job_id: str) -> None:
        """New events since the last poll, oldest first, into the progress callback (newest come first)."""
        if self._progress is None:
            return
        seen = self._seen_events.setdefault(job_id, set())
        fresh = []
        try:
            for event in self.api.call(self.api.sdk.fine_tuning.jobs.list_events, job_id, limit=100):
                if event.id in seen:
                    break
                fresh.append(event)
        except Exception as exc:
            if not is_transient(exc):
                raise
            return
        for event in reversed(fresh):
            seen.add(event.id)
            if _worth_logging(event):
                self._say(f"job {job_id} [{event.level}] {event.message}")

    def _state_of(self, job: Any) -> JobState:
        status = STATUS_MAP.get(job.status)
        if status is None:  # e.g. paused: not in the SDK's literal; keep polling until the deadline
            if (job.id, job.status) not in self._unknown_reported:
                self._unknown_reported.add((job.id, job.status))
                self._say(f"job {job.id}: status {job.status!r} is not one this backend knows; still waiting")
            status = "running"
        error = None
        if status == "failed":
            error = format_job_error(job.error)
        elif status == "cancelled":
            error = "the job was cancelled at the provider (by a person or another process), so no model came out"
        state = JobState(job_id=job.id, status=status, fine_tuned_model=job.fine_tuned_model, error=error)
        self._last_state[job.id] = state
        return state

    def result(self, job_id: str) -> TrainingResult:
        job = self.api.call(self.api.sdk.fine_tuning.jobs.retrieve, job_id)
        state = self._state_of(job)
        trained_tokens = int(job.trained_tokens or 0)
        price = price_per_million(self.settings.training_price_per_million_tokens, job.model)
        metrics: dict[str, float] = {"trained_tokens": float(trained_tokens)}
        if price is not None:
            metrics["cost_usd"] = trained_tokens * price / 1_000_000
        epochs = getattr(getattr(job, "hyperparameters", None), "n_epochs", None)
        if isinstance(epochs, int):
            metrics["n_epochs"] = float(epochs)
        job_key = (job.metadata or {}).get(JOB_KEY)
        if job_key:  # a duplicate started while this one ran (another process): cancel it now, keep this one
            alive = self._jobs_for(job_key, quiet=True)
            if len(alive) > 1:
                self._settle_jobs(job_key, alive, keep=job_id)
            metrics["duplicate_jobs_cancelled"] = float(len(self.duplicates_cancelled.get(job_key, [])))
        if state.status != "succeeded":
            return TrainingResult(
                job_id=job_id,
                status=state.status,
                model_id=None,
                base_model=job.model,
                losses=[],
                validation_losses=[],
                trained_tokens=trained_tokens,
                metrics=metrics,
                error=state.error,
            )
        curve = ResultsCurve([], [], [], [])
        if job.result_files:
            body = self.api.call(self.api.sdk.files.content, job.result_files[0])
            curve = parse_results_csv(body.read())
        for name, series in (
            ("final_train_loss", curve.train_loss),
            ("final_train_accuracy", curve.train_accuracy),
            ("final_validation_loss", curve.valid_loss),
            ("final_valid_mean_token_accuracy", curve.valid_accuracy),
        ):
            value = _last(series)
            if value is not None:
                metrics[name] = value
        metrics["steps"] = float(curve.train_loss[-1][0]) if curve.train_loss else 0.0
        model_id = job.fine_tuned_model
        best = self._best_checkpoint(job_id)
        if best is not None:
            metrics["best_checkpoint_step"] = float(best.step_number)
            metrics["best_checkpoint_full_valid_loss"] = float(best.metrics.full_valid_loss)
            if self.settings.select_checkpoint == "lowest_full_valid_loss":
                model_id = best.fine_tuned_model_checkpoint
                self._say(
                    f"job {job_id}: using checkpoint step {best.step_number} "
                    f"(full_valid_loss {best.metrics.full_valid_loss:.4f}) instead of the final model"
                )
        return TrainingResult(
            job_id=job_id,
            status="succeeded",
            model_id=model_id,
            base_model=job.model,
            losses=curve.train_loss,
            validation_losses=curve.valid_loss,
            trained_tokens=trained_tokens,
            metrics=metrics,
            artifact_uri=None,
        )

    def _best_checkpoint(self, job_id: str) -> Any | None:
        """The checkpoint with the lowest finite `full_valid_loss`, if the job kept any."""
        import openai

        try:
            checkpoints = list(self.api.call(self.api.sdk.fine_tuning.jobs.checkpoints.list, job_id, limit=100))
        except openai.NotFoundError:
            return None
        scored = [
            (float(c.metrics.full_valid_loss), c)
            for c in checkpoints
            if c.metrics is not None
            and c.metrics.full_valid_loss is not None
            and math.isfinite(c.metrics.full_valid_loss)
        ]
        return min(scored, key=lambda pair: pair[0])[1] if scored else None

    def cancel(self, job_id: str) -> None:
        """Cancel a running job; one already finished is left as it is."""
        import openai

        with contextlib.suppress(openai.BadRequestError, openai.ConflictError):
            self.api.call(self.api.sdk.fine_tuning.jobs.cancel, job_id)

    def load(self, model_id: str) -> OpenAITextModel:
        return OpenAITextModel(self.api, model_id)
