"""Fine-tuning backends behind one protocol (`base.FineTuningBackend`); heavy stacks load lazily."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.finetuning.base import FineTuningBackend

if TYPE_CHECKING:
    from finetune_assets.finetuning.openai_client import OpenAIClient
    from finetune_assets.finetuning.openai_files import FileRegistry
    from finetune_assets.settings import Settings


class BackendUnavailable(FinetuneAssetsError, RuntimeError):
    """The configured backend cannot run here; the message says what to change."""


def make_backend(
    name: str,
    state_dir: Path,
    *,
    settings: Settings | None = None,
    openai_client: Callable[[], OpenAIClient] | None = None,
    files: FileRegistry | None = None,
) -> FineTuningBackend:
    """`local` needs only the state directory; `openai` needs the settings, a client (the API key) and the
    platform store that remembers uploaded files. `openai_client` is called only when the backend is
    `openai`, so a local deployment never needs the key."""
    if name == "local":
        from finetune_assets.finetuning.local_backend import LocalBackend

        return LocalBackend(state_dir)
    if name == "openai":
        if settings is None or openai_client is None or files is None:
            raise BackendUnavailable(
                "backend = 'openai' needs the pipeline settings, an OpenAI client (OPENAI_API_KEY in the "
                "environment) and the platform store; build it with `finetuning.runner.runner_for`"
            )
        from finetune_assets.finetuning.openai_backend import OpenAIBackend

        return OpenAIBackend(
            openai_client(),
            files,
            max_tokens_per_example=settings.max_tokens_per_example,
            seed=settings.training.seed,
        )
    raise BackendUnavailable(f"backend = {name!r}: expected 'local' or 'openai' in pipeline_config.yaml")
