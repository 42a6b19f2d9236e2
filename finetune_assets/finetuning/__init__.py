"""Fine-tuning backends behind one protocol (`base.FineTuningBackend`); heavy stacks load lazily."""

from __future__ import annotations

from pathlib import Path

from finetune_assets.finetuning.base import FineTuningBackend


class BackendUnavailable(RuntimeError):
    """The configured backend cannot run here; the message says what to change."""


def make_backend(name: str, state_dir: Path) -> FineTuningBackend:
    if name == "local":
        from finetune_assets.finetuning.local_backend import LocalBackend

        return LocalBackend(state_dir)
    raise BackendUnavailable(
        f"backend = {name!r}: this release fine-tunes with the local backend only "
        "(the OpenAI backend is tracked as its own issue); set `backend: local` in pipeline_config.yaml"
    )
