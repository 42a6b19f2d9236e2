"""The local fine-tuning backend: LoRA on any Hugging Face causal LM with transformers + PEFT, no service.

It makes the whole pipeline runnable offline (the embedded demo, CI) while keeping the OpenAI backend's
contract: `start` is idempotent per `job_key`, and a job's outcome lives in files, so any process can
poll, re-attach or load it later.

Layout under `state_dir`:
    base_models/demo-tiny-gpt2/   the demo base model (built by `demo_base_model.ensure_demo_base_model`)
    jobs/local-<job_key[:20]>/    spec.json, adapter/ (LoRA weights + tokenizer), result.json (written
                                  last, atomically: its presence means the job is finished)

Chat format: the checkpoint tokenizer's own chat template. A tokenizer without one gets
`FALLBACK_CHAT_TEMPLATE`, one block per message:
    <|role|>\\n{content}{eos_token}\\n     and `<|assistant|>\\n` as the generation prompt.

Training runs synchronously inside `start` (the caller's process), in float32 (bf16 autocast on CUDA).
torch, transformers and peft are imported inside functions, so importing this module is cheap and
works where the local extra is not installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.finetuning.base import (
    TERMINAL_STATUSES,
    ChatExample,
    JobState,
    JobStatus,
    Message,
    ProgressCallback,
    TrainingResult,
    TrainingSpec,
    dataset_hash,
)
from finetune_assets.finetuning.demo_base_model import (
    DEMO_BASE_MODEL,
    MARKER_FILE,
    configure_torch_threads,
    is_demo_model_ready,
    quiet_transformers,
    resolve_device,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_HYPERPARAMETERS",
    "FALLBACK_CHAT_TEMPLATE",
    "LocalBackend",
    "LocalBackendError",
    "LocalTextModel",
    "device_info",
]

DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "n_epochs": 3,
    "learning_rate": 1e-3,
    "batch_size": 16,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "max_seq_len": 256,
    "seed": 0,
}
"""Tuned for the demo model; real checkpoints usually want a lower learning rate (1e-4 to 3e-4)."""

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + (eos_token or '') + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

GPT2_LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]
RESULT_FILE = "result.json"
SPEC_FILE = "spec.json"
LOCK_FILE = ".lock"
CANCEL_FILE = "cancel_requested"
ADAPTER_DIR = "adapter"
MAX_EVAL_CONTEXT = 2048
MODEL_CACHE_SIZE = 3


class LocalBackendError(FinetuneAssetsError, RuntimeError):
    """A local job or model that cannot be found, loaded or trained as asked."""


def device_info(device: str = "auto") -> dict[str, Any]:
    """The resolved device and torch thread count, for the run log (why a job was fast or slow)."""
    import torch

    resolved = resolve_device(device)
    info: dict[str, Any] = {
        "device": resolved,
        "torch_threads": configure_torch_threads(),
        "torch_version": torch.__version__,
    }
    if resolved.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(resolved))
    return info


# --------------------------------------------------------------------------------------------- encoding


def _chat_parts(example: ChatExample) -> tuple[list[Message], list[Message]]:
    """(prompt, prompt + completion): everything up to the last assistant message, and through it."""
    messages = list(example.messages)
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise LocalBackendError(f"example {example.post_id} has no assistant message to learn or score")
    last = assistant[-1]
    return messages[:last], messages[: last + 1]


def _render_prompt(tokenizer: Any, prompt: Sequence[Message]) -> str:
    return cast(str, tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True))


def _encode_example(tokenizer: Any, example: ChatExample, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels, prompt labelled -100 so only the assistant's tokens (and end-of-turn) count.

    Prompt and completion are tokenized separately: the boundary is exact whatever the tokenizer, and
    matches generation, where the model continues the tokenized prompt. Over-long examples lose the start
    of the prompt first (kept to at least half the window), then the end of the completion.
    """
    prompt, full = _chat_parts(example)
    prompt_text = _render_prompt(tokenizer, prompt)
    full_text = cast(str, tokenizer.apply_chat_template(full, tokenize=False))
    if full_text.startswith(prompt_text):
        completion_text = full_text[len(prompt_text) :]
    else:  # templates that render history differently from a generation prompt (e.g. reasoning tags)
        completion_text = example.completion + (tokenizer.eos_token or "")
    prompt_ids: list[int] = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids: list[int] = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + len(completion_ids) > max_len:
        keep_completion = min(len(completion_ids), max_len - min(len(prompt_ids), max_len // 2))
        completion_ids = completion_ids[:keep_completion]
        keep_prompt = max_len - len(completion_ids)
        prompt_ids = prompt_ids[-keep_prompt:] if keep_prompt > 0 else []
    return prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids


def _collate(
    batch: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (padding labelled -100)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        labels[row, : len(labs)] = torch.tensor(labs, dtype=torch.long)
    return input_ids.to(device), attention.to(device), labels.to(device)


def _nll_sum(model: Any, batch: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str) -> tuple[Any, int]:
    """Summed next-token NLL over labelled tokens and their count (a token-weighted mean needs both)."""
    import torch
    import torch.nn.functional as F

    input_ids, attention, labels = _collate(batch, pad_id, device)
    with _autocast(device):
        logits = model(input_ids=input_ids, attention_mask=attention).logits
    targets = labels[:, 1:]
    n_tokens = int((targets != -100).sum())
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return (loss if n_tokens else torch.zeros((), device=device)), n_tokens


def _autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _mean_nll(
    model: Any, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str, batch_size: int
) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(encoded), batch_size):
            loss, n = _nll_sum(model, encoded[first : first + batch_size], pad_id, device)
            total += float(loss)
            count += n
    return total / count if count else float("nan")


@contextlib.contextmanager
def _seeded(seed: int, device: str) -> Iterator[None]:
    """Seed torch for a block without disturbing the caller's global RNG state."""
    import torch

    cuda_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------------ models


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT calls a transformers API that v5 deprecated; the FutureWarning is noise in every run log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _load_checkpoint(path: Path, device: str, tokenizer_path: Path | None = None) -> tuple[Any, Any]:
    """Model and tokenizer from local files only (never the hub), with a chat template and a pad token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    configure_torch_threads()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or path), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LocalBackendError(f"tokenizer at {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out, so any id will do
    return model.to(device), tokenizer


def _context_limit(model: Any, cap: int) -> int:
    config = model.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or cap
    return int(min(int(limit), cap))


def _stop_token_ids(tokenizer: Any) -> list[int]:
    """eos plus, for the demo tokenizer, the end-of-turn token: generation ends with the message."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    if isinstance(end_id, int) and end_id != tokenizer.unk_token_id and end_id >= 0:
        ids.add(end_id)
    return sorted(ids)


class _DropPaddingWarning(logging.Filter):
    """Drops transformers' "pass an attention_mask" warning, a false alarm during batched generation.

    generate() does pass the mask; transformers drops it internally once it is all ones, and rows that
    already ended are then fed pad tokens, which trips the heuristic. Batched and one-by-one generation
    give identical text, so the warning would only mislead whoever reads the run log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "strongly recommend passing in an `attention_mask`" not in record.getMessage()


_PADDING_FILTER = _DropPaddingWarning()


class LocalTextModel:
    """A loaded base or fine-tuned model that writes completions and scores assistant messages."""

    def __init__(
        self,
        model_id: str,
        model: Any,
        tokenizer: Any,
        device: str,
        *,
        temperature: float = 0.8,
        top_k: int = 50,
        batch_size: int = 16,
    ) -> None:
        self.model_id = model_id
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.temperature = temperature
        self.top_k = top_k
        self.batch_size = batch_size
        self.context_limit = _context_limit(model, MAX_EVAL_CONTEXT)
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every core
        logging.getLogger("transformers.modeling_utils").addFilter(_PADDING_FILTER)  # idempotent

    def generate(self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int, seed: int) -> list[str]:
        """Sampled completions (temperature, top-k), left-padded batches, reproducible for a seed.

        Batch `i` is seeded with `seed + i`, so results depend on the seed and the prompt list, not on
        what else ran in the process. Only the new text is returned, special tokens removed, stripped.
        """
        import torch

        if not prompts:
            return []
        if max_new_tokens <= 0:
            return ["" for _ in prompts]
        tok = self.tokenizer
        room = max(1, self.context_limit - max_new_tokens)
        encoded = [tok(_render_prompt(tok, p), add_special_tokens=False)["input_ids"][-room:] for p in prompts]
        outputs: list[str] = []
        with self._lock, torch.no_grad():
            for batch_no, first in enumerate(range(0, len(encoded), self.batch_size)):
                chunk = encoded[first : first + self.batch_size]
                width = max(len(ids) for ids in chunk)
                input_ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, ids in enumerate(chunk):
                    if ids:
                        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                        attention[row, width - len(ids) :] = 1
                with _seeded(seed + batch_no, self.device), _autocast(self.device):
                    generated = self.model.generate(
                        input_ids=input_ids.to(self.device),
                        attention_mask=attention.to(self.device),
                        do_sample=True,
                        temperature=self.temperature,
                        top_k=self.top_k,
                        top_p=1.0,
                        max_new_tokens=max_new_tokens,
                        min_new_tokens=1,  # a post is never empty
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=_stop_token_ids(tok),
                    )
                new_tokens = generated[:, width:]
                outputs.extend(text.strip() for text in tok.batch_decode(new_tokens, skip_special_tokens=True))
        return outputs

    def completion_loss(self, examples: Sequence[ChatExample]) -> float:
        """Token-weighted mean NLL of the assistant messages (end-of-turn included) given their prompts."""
        if not examples:
            raise ValueError("completion_loss needs at least one example")
        encoded = [_encode_example(self.tokenizer, ex, self.context_limit) for ex in examples]
        with self._lock:
            return _mean_nll(self.model, encoded, self.tokenizer.pad_token_id, self.device, self.batch_size)


_MODEL_CACHE: OrderedDict[tuple[str, ...], LocalTextModel] = OrderedDict()
_MODEL_CACHE_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------------ backend


def _parse_hyperparameters(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Defaults filled in, OpenAI-style "auto" treated as the default; unknown keys returned, not fatal."""
    params = dict(DEFAULT_HYPERPARAMETERS)
    for key, value in raw.items():
        if key in params and value is not None and value != "auto":
            params[key] = value
    for key in ("n_epochs", "batch_size", "lora_r", "max_seq_len", "seed"):
        params[key] = int(params[key])
    for key in ("learning_rate", "lora_alpha", "lora_dropout"):
        params[key] = float(params[key])
    if params["n_epochs"] < 1 or params["batch_size"] < 1 or params["lora_r"] < 1 or params["max_seq_len"] < 8:
        raise LocalBackendError(f"invalid hyperparameters: {params}")
    return params, sorted(set(raw) - set(DEFAULT_HYPERPARAMETERS))


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


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
            result = self._train(spec, job_id, job_dir, self.resolve_base_model(spec.base_model), say)
            _write_json_atomic(job_dir / RESULT_FILE, result)
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
        _write_json_atomic(
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
            model, tokenizer = _load_checkpoint(base_path, device)
        else:
            from peft import PeftModel

            model, tokenizer = _load_checkpoint(base_path, device, tokenizer_path=adapter_dir)
            with quiet_transformers(), _quiet_peft():
                model = PeftModel.from_pretrained(model, str(adapter_dir)).to(device)
        loaded = LocalTextModel(model_id, model, tokenizer, device)
        with _MODEL_CACHE_LOCK:
            _MODEL_CACHE[key] = loaded
            while len(_MODEL_CACHE) > MODEL_CACHE_SIZE:
                _MODEL_CACHE.popitem(last=False)
        return loaded

    # ----------------------------------------------------------------------------------- training

    def _train(
        self, spec: TrainingSpec, job_id: str, job_dir: Path, base_path: Path, say: Callable[[str], None]
    ) -> dict[str, Any]:
        """The LoRA loop; returns the result.json record (succeeded, failed or cancelled)."""
        import torch
        from peft import LoraConfig, TaskType, get_peft_model

        params, ignored = _parse_hyperparameters(spec.hyperparameters)
        device = resolve_device(self.device)
        threads = configure_torch_threads()
        model_id = f"ft:{self._short_base(spec.base_model)}:{spec.suffix}:{job_id}"
        started_at = time.time()
        _write_json_atomic(
            job_dir / SPEC_FILE,
            {
                "job_id": job_id,
                "job_key": spec.job_key,
                "base_model": spec.base_model,
                "suffix": spec.suffix,
                "hyperparameters": params,
                "train_examples": len(spec.train),
                "train_hash": dataset_hash(spec.train),
                "validation_examples": len(spec.validation),
                "validation_hash": dataset_hash(spec.validation),
                "metadata": dict(spec.metadata),
                "started_at": started_at,
            },
        )
        if ignored:
            say(f"{job_id}: ignoring hyperparameters the local backend does not use: {', '.join(ignored)}")

        model, tokenizer = _load_checkpoint(base_path, device)
        max_len = min(params["max_seq_len"], _context_limit(model, params["max_seq_len"]))
        train = [_encode_example(tokenizer, ex, max_len) for ex in spec.train]
        validation = [_encode_example(tokenizer, ex, max_len) for ex in spec.validation]
        pad_id = tokenizer.pad_token_id
        batch_size = params["batch_size"]
        steps_per_epoch = math.ceil(len(train) / batch_size)
        total_steps = steps_per_epoch * params["n_epochs"]

        losses: list[tuple[int, float]] = []
        validation_losses: list[tuple[int, float]] = []
        trained_tokens = 0
        status: JobStatus = "succeeded"
        error: str | None = None
        step = 0
        with _seeded(params["seed"], device):
            targets: Any = (
                GPT2_LORA_TARGETS if any(n.endswith("c_attn") for n, _ in model.named_modules()) else "all-linear"
            )
            lora = LoraConfig(
                task_type=TaskType.CAUSAL_LM,
                r=params["lora_r"],
                lora_alpha=params["lora_alpha"],
                lora_dropout=params["lora_dropout"],
                target_modules=targets,
                fan_in_fan_out=targets == GPT2_LORA_TARGETS,  # GPT-2's Conv1D stores weights transposed
            )
            with _quiet_peft():
                model = get_peft_model(model, lora)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=params["learning_rate"], weight_decay=0.0
            )
            warmup = max(1, total_steps // 20)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda s: min((s + 1) / warmup, 1.0 - 0.9 * max(0, s - warmup) / max(1, total_steps - warmup)),
            )
            shuffler = torch.Generator().manual_seed(params["seed"])
            say(
                f"{job_id}: LoRA fine-tune of {spec.base_model} on {len(train)} examples "
                f"({len(validation)} validation), {params['n_epochs']} epochs x {steps_per_epoch} steps, "
                f"batch {batch_size}, lr {params['learning_rate']:g}, r {params['lora_r']}, "
                f"{trainable:,} trainable params, device {device}, {threads} threads"
            )
            report_every = max(1, total_steps // 10)
            window: list[float] = []
            train_started = time.monotonic()
            for epoch in range(1, params["n_epochs"] + 1):
                model.train()
                order = torch.randperm(len(train), generator=shuffler).tolist()
                for first in range(0, len(order), batch_size):
                    if (job_dir / CANCEL_FILE).exists():
                        status, error = "cancelled", f"cancelled at step {step}/{total_steps}"
                        break
                    batch = [train[i] for i in order[first : first + batch_size]]
                    loss_sum, n_tokens = _nll_sum(model, batch, pad_id, device)
                    step += 1
                    trained_tokens += sum(len(ids) for ids, _ in batch)
                    if n_tokens == 0:  # every completion truncated away: nothing to learn here
                        continue
                    loss = loss_sum / n_tokens
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        status = "failed"
                        error = f"non-finite training loss ({loss_value}) at step {step}/{total_steps}"
                        break
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    scheduler.step()
                    losses.append((step, loss_value))
                    window.append(loss_value)
                    if step % report_every == 0 or step == total_steps:
                        elapsed = time.monotonic() - train_started
                        eta = elapsed / step * (total_steps - step)
                        say(
                            f"{job_id}: step {step}/{total_steps} epoch {epoch} "
                            f"loss {sum(window) / len(window):.4f} elapsed {_format_seconds(elapsed)} "
                            f"eta {_format_seconds(eta)}"
                        )
                        window = []
                if status != "succeeded":
                    break
                if validation:
                    model.eval()
                    val_loss = _mean_nll(model, validation, pad_id, device, batch_size)
                    if not math.isfinite(val_loss):
                        status, error = "failed", f"non-finite validation loss ({val_loss}) after epoch {epoch}"
                        break
                    validation_losses.append((step, val_loss))
                    say(f"{job_id}: epoch {epoch}/{params['n_epochs']} validation loss {val_loss:.4f}")
        train_seconds = time.monotonic() - train_started
        if status == "succeeded" and (job_dir / CANCEL_FILE).exists():
            status, error = "cancelled", "cancelled after the last step"

        adapter_dir = job_dir / ADAPTER_DIR
        if status == "succeeded":
            with quiet_transformers():
                model.save_pretrained(str(adapter_dir))
                tokenizer.save_pretrained(str(adapter_dir))  # pins the chat template used in training
            say(f"{job_id}: done in {_format_seconds(train_seconds)}, adapter saved to {adapter_dir}")
        else:
            say(f"{job_id}: {status}: {error}")

        tail = [v for _, v in losses[-max(1, len(losses) // 10) :]]
        metrics: dict[str, float] = {
            "train_seconds": round(train_seconds, 3),
            "steps": float(step),
            "trainable_parameters": float(trainable),
            "tokens_per_second": trained_tokens / train_seconds if train_seconds > 0 else 0.0,
        }
        if tail:
            metrics["final_train_loss"] = sum(tail) / len(tail)
        if validation_losses:
            metrics["final_validation_loss"] = validation_losses[-1][1]
        return {
            "job_id": job_id,
            "job_key": spec.job_key,
            "status": status,
            "model_id": model_id if status == "succeeded" else None,
            "base_model": spec.base_model,
            "base_model_path": str(base_path),
            "suffix": spec.suffix,
            "hyperparameters": params,
            "losses": losses,
            "validation_losses": validation_losses,
            "trained_tokens": trained_tokens,
            "metrics": metrics,
            "artifact_uri": str(adapter_dir) if status == "succeeded" else None,
            "error": error,
            "device": device,
            "torch_threads": threads,
            "started_at": started_at,
            "finished_at": time.time(),
        }

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
