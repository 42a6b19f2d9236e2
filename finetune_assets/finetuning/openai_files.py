"""What goes to and comes back from OpenAI's fine-tuning API as files: the training JSONL, the validation
set kept disjoint from it, the results CSV, and a job's error as one line.

Plain functions with no client, so they are tested without a server.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.finetuning.base import ChatExample
from finetune_assets.finetuning.dataset import content_hash

RESULTS_HEADER = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"


class OpenAIBackendError(FinetuneAssetsError, RuntimeError):
    """A fine-tune that cannot start as asked (bad file, over budget): the message says why and what to change."""


class FileRegistry(Protocol):
    """Remembers content hash -> file id per endpoint (the platform store implements it)."""

    def uploaded_file(self, endpoint: str, sha256: str) -> str | None: ...

    def remember_upload(
        self, *, endpoint: str, sha256: str, file_id: str, purpose: str, n_bytes: int, filename: str
    ) -> None: ...


def jsonl_bytes(examples: Sequence[ChatExample]) -> bytes:
    return "".join(example.to_openai_line() + "\n" for example in examples).encode()


def disjoint_validation(
    train: Sequence[ChatExample], validation: Sequence[ChatExample]
) -> tuple[list[ChatExample], int]:
    """Validation examples whose content is in no training example (and not repeated): (kept, dropped)."""
    seen = {content_hash(list(e.messages)) for e in train}
    kept: list[ChatExample] = []
    for example in validation:
        digest = content_hash(list(example.messages))
        if digest not in seen:
            seen.add(digest)
            kept.append(example)
    return kept, len(validation) - len(kept)


@dataclass(frozen=True)
class ResultsCurve:
    """The results CSV: (step, value) series; validation columns only where the step had them."""

    train_loss: list[tuple[int, float]]
    train_accuracy: list[tuple[int, float]]
    valid_loss: list[tuple[int, float]]
    valid_accuracy: list[tuple[int, float]]


def parse_results_csv(body: bytes | str) -> ResultsCurve:
    """Parse `result_files[0]`, decoding it first when it came base64-encoded (it does not start with `step,`)."""
    text = body.decode() if isinstance(body, bytes) else body
    if not text.lstrip().startswith("step,"):
        try:
            text = base64.b64decode(text.strip(), validate=False).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise OpenAIBackendError(f"results file is neither CSV nor base64-encoded CSV ({exc})") from None
    rows = csv.DictReader(io.StringIO(text.lstrip()))
    if rows.fieldnames is None or "step" not in rows.fieldnames or "train_loss" not in rows.fieldnames:
        raise OpenAIBackendError(f"results file header is {rows.fieldnames}, expected {RESULTS_HEADER}")
    curve = ResultsCurve([], [], [], [])
    columns = (
        ("train_loss", curve.train_loss),
        ("train_accuracy", curve.train_accuracy),
        ("valid_loss", curve.valid_loss),
        ("valid_mean_token_accuracy", curve.valid_accuracy),
    )
    for row in rows:
        step = int(float(row["step"]))
        for name, series in columns:
            value = (row.get(name) or "").strip()
            if value:
                series.append((step, float(value)))
    return curve


def format_job_error(error: Any) -> str:
    """OpenAI's `error {code, message, param}` as one line."""
    if error is None:
        return "no error details"
    code = getattr(error, "code", None)
    message = getattr(error, "message", None)
    param = getattr(error, "param", None)
    text = f"{code or 'unknown_error'}: {message or 'no message'}"
    return text + (f" (param: {param})" if param else "")
