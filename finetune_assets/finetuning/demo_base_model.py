"""A tiny GPT-2 built and pretrained on the spot, so the embedded demo fine-tunes without a model hub.

There is no internet in the demo, so no pretrained weights: `ensure_demo_base_model` trains a byte-level
BPE tokenizer and a ~1M-parameter GPT-2 on the demo's own posts for a few seconds. The result writes
corpus-like text, which is all the pipeline needs to show fine-tuning moving a model's style.

The chat format (`format_chat_for_pretraining` and the tokenizer's Jinja `chat_template`) is one format:
    <|role|>content<|end|>\\n   for each message, then `<|assistant|>` as the generation prompt.
Pretraining on the same format the fine-tune and the evaluation use lets the base model answer chats.

torch, transformers and tokenizers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEMO_BASE_MODEL = "demo-tiny-gpt2"
"""The special base-model name the embedded demo uses; the local backend resolves it under its state dir."""

MARKER_FILE = "DEMO_MODEL_READY.json"
"""Written last into a finished model directory: its presence is what makes a build idempotent."""

ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"
END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (END_OF_TEXT, PAD, END_OF_TURN, *(f"<|{role}|>" for role in ROLES))

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
"""Jinja twin of `format_chat_for_pretraining`; the tests check that the two render identically."""

# Architecture: small enough to pretrain in seconds on 2 CPU cores, big enough to learn a style.
N_LAYER = 4
N_HEAD = 4
N_EMBD = 128
N_POSITIONS = 256
BLOCK_SIZE = 128
PRETRAIN_BATCH_SIZE = 16
PRETRAIN_LEARNING_RATE = 3e-3


def format_chat_for_pretraining(messages: Iterable[Mapping[str, str]]) -> str:
    """Render messages exactly as the tokenizer's chat template does, so pretraining text is chat-shaped."""
    return "".join(f"<|{m['role']}|>{m['content']}{END_OF_TURN}\n" for m in messages)


def resolve_device(device: str = "auto") -> str:
    """'auto' picks cuda when a GPU is visible, else cpu; anything else is passed through to torch."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def available_cpus() -> int:
    """CPUs this process may really use: the affinity mask, capped by a cgroup v2 quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def configure_torch_threads() -> int:
    """Never run more torch threads than usable CPUs: oversubscription makes small-model training crawl."""
    import torch

    cpus = available_cpus()
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
    return int(torch.get_num_threads())


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-call progress bars (weights loading/saving): they flood run logs."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def is_demo_model_ready(out_dir: Path) -> bool:
    return (Path(out_dir) / MARKER_FILE).is_file()


def ensure_demo_base_model(
    texts: Iterable[str],
    out_dir: Path,
    *,
    seed: int = 0,
    pretrain_seconds: float = 25.0,
    progress: Callable[[str], None] | None = None,
    vocab_size: int = 3000,
    max_epochs: int = 50,
    device: str = "cpu",
) -> Path:
    """Build the demo base model (tokenizer + tiny GPT-2) into `out_dir` unless it is already there.

    Idempotent: a directory holding the marker file is returned at once, whatever `texts` are. The
    build happens in a temp dir beside `out_dir` and is renamed into place, so a crash never leaves
    a half-written model. Pretraining stops at `max_epochs` or `pretrain_seconds`, whichever comes
    first; initialisation and batch order are seeded, so the result is deterministic when the epoch
    cap binds (when the time budget binds, the step count depends on the machine's speed).
    """
    out_dir = Path(out_dir)
    if is_demo_model_ready(out_dir):
        return out_dir
    say = progress or (lambda _line: None)
    corpus = [t for t in texts if t and t.strip()]
    if not corpus:
        raise ValueError("ensure_demo_base_model needs at least one non-empty text to train on")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        info = _build(
            corpus,
            tmp_dir,
            seed=seed,
            pretrain_seconds=pretrain_seconds,
            say=say,
            vocab_size=vocab_size,
            max_epochs=max_epochs,
            device=device,
        )
        _write_json_atomic(tmp_dir / MARKER_FILE, info)
        if out_dir.exists() and not is_demo_model_ready(out_dir):
            shutil.rmtree(out_dir)  # leftovers of something that never finished
        try:
            os.replace(tmp_dir, out_dir)
        except OSError:
            if not is_demo_model_ready(out_dir):  # a concurrent builder won the race: use its model
                raise
        say(f"demo base model ready at {out_dir}")
        return out_dir
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _build(
    corpus: list[str],
    tmp_dir: Path,
    *,
    seed: int,
    pretrain_seconds: float,
    say: Callable[[str], None],
    vocab_size: int,
    max_epochs: int,
    device: str,
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    started = time.monotonic()
    threads = configure_torch_threads()
    device = resolve_device(device)
    tokenizer = _train_tokenizer(corpus, vocab_size)
    say(f"demo base model: tokenizer trained on {len(corpus)} texts, vocab {len(tokenizer)}")

    eot_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    stream: list[int] = []
    for ids in tokenizer(corpus, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eot_id)
    block = min(BLOCK_SIZE, len(stream))
    n_blocks = max(1, len(stream) // block)
    batches_per_epoch = math.ceil(n_blocks / PRETRAIN_BATCH_SIZE)
    max_steps = max(1, max_epochs * batches_per_epoch)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=N_POSITIONS,
            n_embd=N_EMBD,
            n_layer=N_LAYER,
            n_head=N_HEAD,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model: Any = GPT2LMHeadModel(config)  # Any: transformers' `to` signature confuses mypy
        model = model.to(device)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LEARNING_RATE, weight_decay=0.01)
        rng = random.Random(seed)
        data = torch.tensor(stream, dtype=torch.long)
        say(
            f"demo base model: pretraining {model.num_parameters():,} params on {len(stream):,} tokens "
            f"({n_blocks} blocks of {block}), budget {pretrain_seconds:.0f}s / {max_epochs} epochs, "
            f"device {device}, {threads} threads"
        )
        train_started = time.monotonic()
        step, epoch, loss_value = 0, 0, float("nan")
        next_report = 0.1
        done = False
        while not done and epoch < max_epochs:
            epoch += 1
            # A fresh random offset each epoch lets blocks straddle different text boundaries.
            offset = rng.randrange(block) if len(stream) > n_blocks * block else 0
            starts = [offset + i * block for i in range(n_blocks) if offset + (i + 1) * block <= len(stream)]
            rng.shuffle(starts)
            for first in range(0, len(starts), PRETRAIN_BATCH_SIZE):
                batch = torch.stack([data[s : s + block] for s in starts[first : first + PRETRAIN_BATCH_SIZE]])
                batch = batch.to(device)
                elapsed = time.monotonic() - train_started
                done_fraction = max(step / max_steps, elapsed / max(pretrain_seconds, 1e-9))
                for group in optimizer.param_groups:
                    group["lr"] = _pretrain_lr(step, done_fraction)
                logits = model(input_ids=batch).logits
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                step += 1
                loss_value = float(loss.detach())
                if done_fraction >= next_report:
                    next_report += 0.1
                    say(f"demo base model: step {step} epoch {epoch} loss {loss_value:.3f} elapsed {elapsed:.1f}s")
                if step >= max_steps or time.monotonic() - train_started >= pretrain_seconds:
                    done = True
                    break
        if not math.isfinite(loss_value):
            raise RuntimeError(f"demo base model pretraining diverged (loss {loss_value})")

    model.eval()
    with quiet_transformers():
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
    say(f"demo base model: pretrained {step} steps ({epoch} epochs), final loss {loss_value:.3f}")
    return {
        "name": DEMO_BASE_MODEL,
        "seed": seed,
        "steps": step,
        "epochs": epoch,
        "final_loss": loss_value,
        "vocab_size": len(tokenizer),
        "n_texts": len(corpus),
        "n_tokens": len(stream),
        "corpus_sha256": hashlib.sha256("\x1e".join(corpus).encode()).hexdigest(),
        "pretrain_seconds": round(time.monotonic() - train_started, 2),
        "build_seconds": round(time.monotonic() - started, 2),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _pretrain_lr(step: int, done_fraction: float, warmup_steps: int = 20) -> float:
    """Linear warmup, then cosine decay driven by whichever budget (steps or seconds) is used up faster."""
    if step < warmup_steps:
        return PRETRAIN_LEARNING_RATE * (step + 1) / warmup_steps
    return PRETRAIN_LEARNING_RATE * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done_fraction))))


def _train_tokenizer(corpus: list[str], vocab_size: int) -> Any:
    """Byte-level BPE (any text encodes, nothing is <unk>) with chat roles and end-of-turn as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        # End-of-turn is the eos: generation stops when the assistant's message ends.
        eos_token=END_OF_TURN,
        pad_token=PAD,
        extra_special_tokens=[f"<|{role}|>" for role in ROLES],
        model_max_length=N_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)
