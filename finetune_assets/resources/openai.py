"""The OpenAI API key as a resource: `dg.EnvVar("OPENAI_API_KEY")`, so the UI and run config show the name only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from finetune_assets.finetuning.openai_client import OpenAIClient
    from finetune_assets.settings import OpenAISettings, Settings


class OpenAIResource(dg.ConfigurableResource):
    """`api_key` unset: the openai backend and the judge fail with a message naming `OPENAI_API_KEY`.

    Everything else about the client (base URL, Azure endpoint, retries, limits) is in `openai:` of
    pipeline_config.yaml; only the secret comes through here. The backends are built by
    `finetuning.runner.backend_for`, which calls `client` only when the openai backend is configured.
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
