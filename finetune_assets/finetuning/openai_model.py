"""A model served by OpenAI's chat completions: writes posts for evaluation and A/B traffic, scores none."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from finetune_assets.finetuning.base import ChatExample, LossUnavailable, Message
from finetune_assets.finetuning.openai_client import OpenAIClient


class OpenAITextModel:
    """A base or `ft:` model behind chat completions: it writes posts but cannot score given text."""

    def __init__(self, api: OpenAIClient, model_id: str) -> None:
        self.api = api
        self.model_id = model_id

    def generate(self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int, seed: int) -> list[str]:
        """One completion per prompt, `chat_concurrency` in flight at once, in prompt order."""
        if not prompts:
            return []
        workers = min(len(prompts), self.api.settings.chat_concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-chat") as pool:
            return list(
                pool.map(
                    lambda prompt: self.api.chat(
                        self.model_id, [dict(m) for m in prompt], max_tokens=max_new_tokens, seed=seed
                    ),
                    prompts,
                )
            )

    def completion_loss(self, examples: Sequence[ChatExample]) -> float:
        raise LossUnavailable(
            f"{self.model_id}: the OpenAI API does not score given text (no log-probabilities of a supplied "
            "completion), so no held-out loss"
        )
