"""The fine-tuning backend protocol: every backend prepares, starts (or re-attaches), polls and loads.

Assets talk only to this protocol, so the OpenAI API and the local transformers + PEFT trainer are
interchangeable. Everything here is plain data: no Dagster, no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from finetune_assets.errors import FinetuneAssetsError

Message = dict[str, str]
"""One chat message: {"role": "system" | "user" | "assistant", "content": "..."}."""

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

ProgressCallback = Callable[[str], None]
"""Receives human-readable progress lines (training steps, ETA); assets forward them to the run log."""


@dataclass(frozen=True)
class ChatExample:
    """A chat-format training example: the prompt messages followed by one assistant message."""

    post_id: int
    messages: tuple[Message, ...]

    @property
    def prompt(self) -> list[Message]:
        return [m for m in self.messages if m["role"] != "assistant"]

    @property
    def completion(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "assistant")

    def to_openai_line(self) -> str:
        return json.dumps({"messages": list(self.messages)}, ensure_ascii=False, sort_keys=True)


def dataset_hash(examples: Sequence[ChatExample]) -> str:
    """Content hash of a dataset: the identity used for idempotency and lineage."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.to_openai_line().encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class TrainingSpec:
    """What to train. `job_key` is the idempotency key: same key, same job, never trained twice."""

    job_key: str
    base_model: str
    train: Sequence[ChatExample]
    validation: Sequence[ChatExample]
    hyperparameters: dict[str, Any]
    suffix: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobState:
    job_id: str
    status: JobStatus
    fine_tuned_model: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class TrainingResult:
    """A finished job. `losses` is the training curve as (step, loss); metrics are final scalars."""

    job_id: str
    status: JobStatus
    model_id: str | None
    base_model: str
    losses: list[tuple[int, float]]
    validation_losses: list[tuple[int, float]]
    trained_tokens: int
    metrics: dict[str, float]
    artifact_uri: str | None = None
    error: str | None = None


class LossUnavailable(FinetuneAssetsError, NotImplementedError):
    """The model cannot score given text (an API that only generates): evaluation compares without the loss."""


class TextModel(Protocol):
    """A model that writes posts: used by evaluation and to serve A/B traffic."""

    model_id: str

    def generate(self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int, seed: int) -> list[str]:
        """One completion per prompt (sampled, reproducible for a given seed)."""
        ...

    def completion_loss(self, examples: Sequence[ChatExample]) -> float:
        """Mean per-token negative log-likelihood of the assistant messages given their prompts.

        Raises `LossUnavailable` where the model cannot score text (the OpenAI API).
        """
        ...


class FineTuningBackend(Protocol):
    name: str

    def start(self, spec: TrainingSpec, progress: ProgressCallback | None = None) -> JobState:
        """Start the job for `spec`, or re-attach to the one already started for `spec.job_key`."""
        ...

    def poll(self, job_id: str) -> JobState: ...

    def result(self, job_id: str) -> TrainingResult: ...

    def cancel(self, job_id: str) -> None: ...

    def load(self, model_id: str) -> TextModel:
        """A generator for a fine-tuned model id or a base model name."""
        ...
