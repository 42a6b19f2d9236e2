"""The local fine-tuning backend: LoRA on any Hugging Face causal LM with transformers + PEFT, no service.

It makes the whole pipeline runnable offline (the embedded demo, CI) while keeping the OpenAI backend's
contract: `start` is idempotent per `job_key`, and a job's outcome lives in files, so any process can
poll, re-attach or load it later. The training loop is `local_training`; loading, encoding and the text
model are `local_model`.

Layout under `state_dir`:
    base_models/demo-tiny-gpt2/   the demo base model (built by `demo_base_model.ensure_demo_base_model`)
    jobs/local-<job_key[:20]>/    spec.json, adapter/ (LoRA weights + tokenizer), result.json (written
                                  last, atomically: its presence means the job is finished)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from finetune_assets.finetuning.base import (
    TERMINAL_STATUSES,
    JobState,
    JobStatus,
    ProgressCallback,
    TrainingResult,
    TrainingSpec,
)
from finetune_assets.finetuning.demo_base_model import (
    DEMO_BASE_MODEL,
    MARKER_FILE,
    is_demo_model_ready,
    quiet_transformers,
    resolve_device,
)
from finetune_assets.finetuning.local_model import (
    FALLBACK_CHAT_TEMPLATE,
    LocalBackendError,
    LocalTextModel,
    device_info,
    load_checkpoint,
    quiet_peft,
)
from finetune_assets.finetuning.local_training import (
    ADAPTER_DIR,
    CANCEL_FILE,
    DEFAULT_HYPERPARAMETERS,
    SPEC_FILE,
    train_lora,
    write_json_atomic,
)

__all__ = [
    "DEFAULT_HYPERPARAMETERS",
    "FALLBACK_CHAT_TEMPLATE",
    "LocalBackend",
    "LocalBackendError",
    "LocalTextModel",
    "device_info",
]

RESULT_FILE = "result.json"
LOCK_FILE = ".lock"
MODEL_CACHE_SIZE = 3

_MODEL_CACHE: OrderedDict[tuple[str, ...], LocalTextModel] = OrderedDict()
_MODEL_CACHE_LOCK = threading.Lock()


class LocalBackend:
    """Fine-tunes LoRA adapters on local checkpoints; every job is a directory under `state_dir/jobs`."""

    name = "local"

    def __init__(self, state_dir: Path, *, device: str = "auto") -> None:
        self.state_dir = Path(state_dir)
        self.device = device

    # ----------------------------------------------------------------------------------- paths

    @property
    def demo_base_model_dir(self) -> Path:
        """Where `DEMO_BASE_MODEL` must be built (pass this to `ensure_demo_base_model`)."""
        return self.state_dir / "base_models" / DEMO_BASE_MODEL

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id

    @staticmethod
    def job_id_for(spec: TrainingSpec) -> str:
        return "local-" + spec.job_key[:20]

    def resolve_base_model(self, base_model: str) -> Path:
        """The checkpoint directory for a base-model name or path, or a `LocalBackendError` saying why not."""
        if base_model == DEMO_BASE_MODEL:
            path = self.demo_base_model_dir
            if not is_demo_model_ready(path):
                raise LocalBackendError(
                    f"demo base model {DEMO_BASE_MODEL!r} is not built at {path} (no {MARKER_FILE}); build it "
                    "first with finetune_assets.finetuning.demo_base_model.ensure_demo_base_model(texts, "
                    f"{str(path)!r})"
                )
            return path
        path = Path(base_model).expanduser()
        if path.is_dir() and (path / "config.json").is_file():
            return path.resolve()
        raise LocalBackendError(
            f"unknown model {base_model!r}: the local backend takes {DEMO_BASE_MODEL!r}, a local Hugging Face "
            "checkpoint directory (config.json + weights + tokenizer), or an 'ft:...:local-...' id of a "
            f"job under {self.state_dir / 'jobs'} (there is no model hub here)"
        )

    @staticmethod
    def _short_base(base_model: str) -> str:
        return base_model if base_model == DEMO_BASE_MODEL else Path(base_model).name

    # ----------------------------------------------------------------------------------- protocol

    def start(self, spec: TrainingSpec, progress: ProgressCallback | None = None) -> JobState:
        """Train now (synchronously) unless this `job_key` already finished: then just re-attach.

        A per-job file lock serialises concurrent starts: the second one waits, then re-attaches. A
        failed or cancelled job is final for its key too (like an OpenAI job); retry with a new key.
        An exception (a bug, out of memory) propagates and leaves no result, so a retry trains again.
        """
        say = progress or (lambda _line: None)
        job_id = self.job_id_for(spec)
        job_dir = self.job_dir(job_id)
        if not (job_dir / RESULT_FILE).is_file():
            # Bad input fails before the job directory exists, so it never shows up as a job.
            if not spec.train:
                raise LocalBackendError(f"{job_id}: the training set is empty")
            self.resolve_base_model(spec.base_model)
        job_dir.mkdir(parents=True, exist_ok=True)
        with self._job_lock(job_dir):
            if (job_dir / RESULT_FILE).is_file():
                state = self.poll(job_id)
                say(f"{job_id}: already {state.status}, re-attached (no training)")
                return state
            (job_dir / CANCEL_FILE).unlink(missing_ok=True)
            result = train_lora(
                spec,
                job_id=job_id,
                job_dir=job_dir,
                base_path=self.resolve_base_model(spec.base_model),
                model_id=f"ft:{self._short_base(spec.base_model)}:{spec.suffix}:{job_id}",
                device=resolve_device(self.device),
                say=say,
            )
            write_json_atomic(job_dir / RESULT_FILE, result)
        return self.poll(job_id)

    def poll(self, job_id: str) -> JobState:
        job_dir = self._existing_job_dir(job_id)
        record = self._read_result(job_dir)
        if record is not None:
            return JobState(
                job_id=job_id,
                status=cast(JobStatus, record["status"]),
                fine_tuned_model=record.get("model_id"),
                error=record.get("error"),
            )
        if self._is_locked(job_dir):
            return JobState(job_id=job_id, status="running")
        return JobState(
            job_id=job_id,
            status="failed",
            error="training was interrupted before it finished (no result.json); start() the spec again",
        )

    def result(self, job_id: str) -> TrainingResult:
        job_dir = self._existing_job_dir(job_id)
        record = self._read_result(job_dir)
        if record is None:  # still running, or interrupted: what is known so far
            state = self.poll(job_id)
            spec = self._read_json(job_dir / SPEC_FILE) or {}
            return TrainingResult(
                job_id=job_id,
                status=state.status,
                model_id=None,
                base_model=str(spec.get("base_model", "")),
                losses=[],
                validation_losses=[],
                trained_tokens=0,
                metrics={},
                error=state.error,
            )
        return TrainingResult(
            job_id=job_id,
            status=cast(JobStatus, record["status"]),
            model_id=record.get("model_id"),
            base_model=record["base_model"],
            losses=[(int(s), float(v)) for s, v in record.get("losses", [])],
            validation_losses=[(int(s), float(v)) for s, v in record.get("validation_losses", [])],
            trained_tokens=int(record.get("trained_tokens", 0)),
            metrics={k: float(v) for k, v in record.get("metrics", {}).items()},
            artifact_uri=record.get("artifact_uri"),
            error=record.get("error"),
        )

    def cancel(self, job_id: str) -> None:
        """Mark an unfinished job cancelled; a trainer still running notices within a step and stops."""
        job_dir = self._existing_job_dir(job_id)
        if self._read_result(job_dir) is not None:
            return
        (job_dir / CANCEL_FILE).touch()
        spec = self._read_json(job_dir / SPEC_FILE) or {}
        write_json_atomic(
            job_dir / RESULT_FILE,
            {
                "job_id": job_id,
                "status": "cancelled",
                "model_id": None,
                "base_model": spec.get("base_model", ""),
                "error": "cancelled",
            },
        )

    def load(self, model_id: str) -> LocalTextModel:
        """A base model (demo name or checkpoint path) or a fine-tuned `ft:...:<job_id>`; cached (LRU)."""
        device = resolve_device(self.device)
        if model_id.startswith("ft:"):
            job_id = model_id.rsplit(":", 1)[-1]
            job_dir = self.job_dir(job_id)
            record = self._read_result(job_dir) if job_dir.is_dir() else None
            if record is None or record.get("model_id") != model_id:
                raise LocalBackendError(f"unknown fine-tuned model {model_id!r}: no finished job {job_dir}")
            if record["status"] != "succeeded":
                raise LocalBackendError(f"model {model_id!r} is unusable: its job {record['status']}")
            base_path = self.resolve_base_model(record["base_model"])
            adapter_dir = job_dir / ADAPTER_DIR
            stamp = str((job_dir / RESULT_FILE).stat().st_mtime_ns)
            key = (model_id, str(base_path), str(adapter_dir), stamp, device)
        else:
            base_path = self.resolve_base_model(model_id)
            adapter_dir = None
            marker = base_path / MARKER_FILE
            stamp = str(marker.stat().st_mtime_ns) if marker.is_file() else ""
            key = (model_id, str(base_path), "", stamp, device)

        with _MODEL_CACHE_LOCK:
            cached = _MODEL_CACHE.get(key)
            if cached is not None:
                _MODEL_CACHE.move_to_end(key)
                return cached
        if adapter_dir is None:
            model, tokenizer = load_checkpoint(base_path, device)
        else:
            from peft import PeftModel

            model, tokenizer = load_checkpoint(base_path, device, tokenizer_path=adapter_dir)
            with quiet_transformers(), quiet_peft():
                model = PeftModel.from_pretrained(model, str(adapter_dir)).to(device)
        loaded = LocalTextModel(model_id, model, tokenizer, device)
        with _MODEL_CACHE_LOCK:
            _MODEL_CACHE[key] = loaded
            while len(_MODEL_CACHE) > MODEL_CACHE_SIZE:
                _MODEL_CACHE.popitem(last=False)
        return loaded

    # ----------------------------------------------------------------------------------- files

    def _existing_job_dir(self, job_id: str) -> Path:
        job_dir = self.job_dir(job_id)
        if not job_id.startswith("local-") or "/" in job_id or not job_dir.is_dir():
            raise LocalBackendError(f"unknown local job {job_id!r} (no directory {job_dir})")
        return job_dir

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def _read_result(self, job_dir: Path) -> dict[str, Any] | None:
        record = self._read_json(job_dir / RESULT_FILE)
        if record is not None and record.get("status") not in TERMINAL_STATUSES:
            raise LocalBackendError(f"corrupt {job_dir / RESULT_FILE}: status {record.get('status')!r}")
        return record

    @staticmethod
    @contextlib.contextmanager
    def _job_lock(job_dir: Path) -> Iterator[None]:
        with open(job_dir / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _is_locked(job_dir: Path) -> bool:
        try:
            with open(job_dir / LOCK_FILE, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return False
        except BlockingIOError:
            return True
