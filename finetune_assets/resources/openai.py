"""The OpenAI API key as a resource: `dg.EnvVar("OPENAI_API_KEY")`, so the UI and run config show the name only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from finetune_assets.finetuning.base import FineTuningBackend
    from finetune_assets.finetuning.openai_backend import FileRegistry
    from finetune_assets.finetuning.openai_client import OpenAIClient
    from finetune_assets.settings import OpenAISettings, Settings


class OpenAIResource(dg.ConfigurableResource):
    """`api_key` unset: the openai backend and the judge fail with a message naming `OPENAI_API_KEY`.

    Everything else about the client (base URL, Azure endpoint, retries, limits) is in `openai:` of
    pipeline_config.yaml; only the secret comes through here.
    """

    api_key: str | None = Field(default=None, description="Set from the environment: dg.EnvVar('OPENAI_API_KEY').")

    def client(self, settings: OpenAISettings) -> OpenAIClient:
        """A client for `settings` (lazy: imports the openai SDK only when called)."""
        from finetune_assets.finetuning.openai_client import OpenAIClient

        return OpenAIClient.from_settings(settings, self.api_key)

    def client_or_failure(self, settings: Settings) -> OpenAIClient:
        """The client, or a `dg.Failure` naming OPENAI_API_KEY (e.g. a judge model configured without a key)."""
        from finetune_assets.finetuning.openai_client import OpenAIConfigError

        try:
            return self.client(settings.openai)
        except OpenAIConfigError as exc:
            raise dg.Failure(description=str(exc)) from None

    def backend(self, settings: Settings, files: FileRegistry) -> FineTuningBackend:
        """The configured backend; for `openai` with a client built from this key and `settings.openai`."""
        from finetune_assets.finetuning import BackendUnavailable, make_backend
        from finetune_assets.finetuning.openai_client import OpenAIConfigError

        try:
            client = self.client(settings.openai) if settings.backend == "openai" else None
            return make_backend(
                settings.backend, settings.resolved_state_dir(), settings=settings, openai_client=client, files=files
            )
        except (BackendUnavailable, OpenAIConfigError) as exc:
            raise dg.Failure(description=str(exc)) from None


def backend_failure(backend: FineTuningBackend, exc: BaseException) -> dg.Failure | None:
    """A user-facing `dg.Failure` for what the OpenAI backend raised (API error, cost gate, open breaker), with
    the key redacted; None for anything else (a bug: its traceback is wanted)."""
    from finetune_assets.finetuning.openai_client import api_failure_message

    explain = getattr(backend, "explain", None)
    message = explain(exc) if explain is not None else None
    if message is None:  # e.g. the judge's client next to a local backend
        message = api_failure_message(exc)
    return dg.Failure(description=message) if message is not None else None
