"""The local LoRA training loop: one job's epochs, validation, cancellation and its result record.

Runs synchronously in the caller's process, in float32 (bf16 autocast on CUDA). The record it returns is
what `LocalBackend` writes as the job's result.json.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from finetune_assets.finetuning.base import JobStatus, TrainingSpec, dataset_hash
from finetune_assets.finetuning.demo_base_model import configure_torch_threads, quiet_transformers
from finetune_assets.finetuning.local_model import (
    LocalBackendError,
    context_limit,
    encode_example,
    load_checkpoint,
    mean_nll,
    nll_sum,
    quiet_peft,
    seeded,
)

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

GPT2_LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]
SPEC_FILE = "spec.json"
CANCEL_FILE = "cancel_requested"
ADAPTER_DIR = "adapter"


def parse_hyperparameters(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
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


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


def train_lora(
    spec: TrainingSpec,
    *,
    job_id: str,
    job_dir: Path,
    base_path: Path,
    model_id: str,
    device: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The LoRA loop; returns the result.json record (succeeded, failed or cancelled)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    params, ignored = parse_hyperparameters(spec.hyperparameters)
    threads = configure_torch_threads()
    started_at = time.time()
    write_json_atomic(
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

    model, tokenizer = load_checkpoint(base_path, device)
    max_len = min(params["max_seq_len"], context_limit(model, params["max_seq_len"]))
    train = [encode_example(tokenizer, ex, max_len) for ex in spec.train]
    validation = [encode_example(tokenizer, ex, max_len) for ex in spec.validation]
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
    with seeded(params["seed"], device):
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
        with quiet_peft():
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
                loss_sum, n_tokens = nll_sum(model, batch, pad_id, device)
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
                        f"loss {sum(window) / len(window):.4f} elapsed {format_seconds(elapsed)} "
                        f"eta {format_seconds(eta)}"
                    )
                    window = []
            if status != "succeeded":
                break
            if validation:
                model.eval()
                val_loss = mean_nll(model, validation, pad_id, device, batch_size)
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
        say(f"{job_id}: done in {format_seconds(train_seconds)}, adapter saved to {adapter_dir}")
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
