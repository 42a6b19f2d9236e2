"""From the app's post rows to chat-format training examples: validation, exclusion reasons, split.

A bad row never crashes a cycle: it is excluded with one reason from `RejectReason`, counted, and recorded
in the ledger. Plain Python, shared by every backend.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from finetune_assets.finetuning.base import ChatExample, Message
from finetune_assets.finetuning.pii import contains_pii

PROMPT_ROLES = frozenset({"system", "user"})
# The role and key sets of OpenAI's chat fine-tuning data-prep cookbook
# (https://cookbook.openai.com/examples/chat_finetuning_data_prep): the format check uses exactly these counters.
COOKBOOK_ROLES = frozenset({"system", "user", "assistant", "function"})
COOKBOOK_KEYS = frozenset({"role", "content", "name", "function_call", "weight"})
FORMAT_COUNTERS = (
    "data_type",
    "missing_messages_list",
    "message_missing_key",
    "message_unrecognized_key",
    "unrecognized_role",
    "missing_content",
    "example_missing_assistant_message",
)

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
# A str holds a code point UTF-8 cannot encode only if it holds a surrogate (JSON lets "\ud800" through alone).
_UNENCODABLE = re.compile("[\ud800-\udfff]")
# C0 controls but tab, newline and carriage return, DEL and C1: NUL is refused by Postgres text, the rest are
# invisible in a post and make an example nobody meant to train on. One scan for both on clean text.
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class RejectReason(StrEnum):
    MISSING_COMPLETION = "missing_completion"
    EMPTY_COMPLETION = "empty_completion"
    NEGATIVE_COUNTS = "negative_counts"
    ENGAGEMENTS_EXCEED_IMPRESSIONS = "engagements_exceed_impressions"
    INVALID_PROMPT_JSON = "invalid_prompt_json"
    INVALID_PROMPT_MESSAGES = "invalid_prompt_messages"
    UNENCODABLE_TEXT = "unencodable_text"
    CONTROL_CHARACTERS = "control_characters"
    OVERSIZED_TEXT = "oversized_text"
    TOO_MANY_TOKENS = "too_many_tokens"
    PII = "pii"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int
    max_completion_chars: int
    max_tokens_per_example: int


@dataclass(frozen=True)
class ValidPost:
    example: ChatExample
    content_hash: str
    impressions: int
    engagements: int

    @property
    def engagement_rate(self) -> float:
        return self.engagements / self.impressions if self.impressions else 0.0


def approx_token_count(messages: Sequence[Message]) -> int:
    """Word-and-punctuation count plus the cookbook's per-message overhead: a backend-neutral estimate."""
    return 3 + sum(3 + len(_TOKEN.findall(m.get("content") or "")) for m in messages)


def text_defect(texts: Iterable[str]) -> RejectReason | None:
    """Why these strings cannot go into a training file, a hash or a Postgres text column, if they cannot."""
    for text in texts:
        if _BAD_TEXT.search(text):
            return RejectReason.UNENCODABLE_TEXT if _UNENCODABLE.search(text) else RejectReason.CONTROL_CHARACTERS
    return None


def content_hash(messages: Sequence[Message]) -> str:
    canonical = json.dumps([[m["role"], m["content"].strip()] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_prompt(raw: Any) -> list[Message] | RejectReason:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError, an integer over 4300 digits, deep nesting
            return RejectReason.INVALID_PROMPT_JSON
    if not isinstance(raw, list) or not raw:
        return RejectReason.INVALID_PROMPT_MESSAGES
    messages: list[Message] = []
    for item in raw:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("role"), str)  # an unhashable role would raise in the set lookup
            or item["role"] not in PROMPT_ROLES
            or not isinstance(item.get("content"), str)
            or not item["content"].strip()
        ):
            return RejectReason.INVALID_PROMPT_MESSAGES
        messages.append({"role": item["role"], "content": item["content"]})
    if not any(m["role"] == "user" for m in messages):
        return RejectReason.INVALID_PROMPT_MESSAGES
    return messages


def validate_post(row: Mapping[str, Any], limits: Limits) -> ValidPost | RejectReason:
    """One post row -> a training example, or the first reason it cannot be one."""
    impressions, engagements = row.get("impressions"), row.get("engagements")
    if not isinstance(impressions, int) or not isinstance(engagements, int) or impressions < 0 or engagements < 0:
        return RejectReason.NEGATIVE_COUNTS
    if engagements > impressions:
        return RejectReason.ENGAGEMENTS_EXCEED_IMPRESSIONS
    completion = row.get("completion")
    if completion is None:
        return RejectReason.MISSING_COMPLETION
    if not isinstance(completion, str) or not completion.strip():
        return RejectReason.EMPTY_COMPLETION
    raw_prompt = row.get("prompt_messages")
    if isinstance(raw_prompt, str) and len(raw_prompt) > limits.max_prompt_chars:
        return RejectReason.OVERSIZED_TEXT
    prompt = parse_prompt(raw_prompt)
    if isinstance(prompt, RejectReason):
        return prompt
    if len(completion) > limits.max_completion_chars:
        return RejectReason.OVERSIZED_TEXT
    if sum(len(m["content"]) for m in prompt) > limits.max_prompt_chars:
        return RejectReason.OVERSIZED_TEXT
    # Before anything encodes, hashes or tokenizes the text; roles are one of PROMPT_ROLES but checked all the same.
    defect = text_defect(itertools.chain((completion,), *((m["role"], m["content"]) for m in prompt)))
    if defect is not None:
        return defect
    messages = (*prompt, {"role": "assistant", "content": completion.strip()})
    if approx_token_count(messages) > limits.max_tokens_per_example:
        return RejectReason.TOO_MANY_TOKENS
    if contains_pii(completion) or any(contains_pii(m["content"]) for m in prompt):
        return RejectReason.PII
    return ValidPost(
        example=ChatExample(post_id=int(row["post_id"]), messages=messages),
        content_hash=content_hash(messages),
        impressions=impressions,
        engagements=engagements,
    )


def is_holdout(post_id: int, fraction: float, salt: str = "holdout-v1") -> bool:
    """Stable, order-independent assignment of a post to the evaluation holdout (never `hash()`)."""
    digest = hashlib.sha256(f"{salt}:{post_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class Selection:
    """Result of turning candidate rows into a dataset: kept examples and the excluded, by reason."""

    train: list[ValidPost]
    holdout: list[ValidPost]
    rejected: list[tuple[int, RejectReason]]

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(str(reason) for _, reason in self.rejected).items()))


KnownHashes = frozenset[str] | Callable[[Sequence[str]], AbstractSet[str]]
"""Hashes of examples already trained on: a set, or a batch lookup returning which of the given hashes are known
(the store asks the ledger for just those, so memory does not grow with the training history)."""


def select_examples(
    rows: Iterable[Mapping[str, Any]],
    limits: Limits,
    *,
    holdout_fraction: float,
    known_hashes: KnownHashes = frozenset(),
    max_examples: int | None = None,
    batch_size: int = 1000,
) -> Selection:
    """Validate rows, drop duplicates (within the batch and of examples already trained), split a holdout.

    Rows are validated `batch_size` at a time so that known hashes are looked up once per batch; the outcome is
    the same as row by row (the rows after the cap are dropped, not counted)."""
    lookup = known_hashes if callable(known_hashes) else known_hashes.intersection
    selection = Selection(train=[], holdout=[], rejected=[])
    seen: set[str] = set()
    stream = iter(rows)
    for batch in iter(lambda: list(itertools.islice(stream, batch_size)), []):
        outcomes = [(row, validate_post(row, limits)) for row in batch]
        known = lookup([o.content_hash for _, o in outcomes if isinstance(o, ValidPost)])
        for row, outcome in outcomes:
            if isinstance(outcome, RejectReason):
                selection.rejected.append((int(row["post_id"]), outcome))
                continue
            if outcome.content_hash in seen or outcome.content_hash in known:
                selection.rejected.append((outcome.example.post_id, RejectReason.DUPLICATE))
                continue
            if max_examples is not None and len(selection.train) + len(selection.holdout) >= max_examples:
                return selection
            seen.add(outcome.content_hash)
            target = selection.holdout if is_holdout(outcome.example.post_id, holdout_fraction) else selection.train
            target.append(outcome)
    return selection


def cookbook_format_errors(lines: Iterable[Any]) -> dict[str, int]:
    """OpenAI's cookbook format checks: counters keyed by the cookbook's names."""
    errors = dict.fromkeys(FORMAT_COUNTERS, 0)
    for line in lines:
        if not isinstance(line, dict):
            errors["data_type"] += 1
            continue
        messages = line.get("messages")
        if not messages:
            errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                errors["message_missing_key"] += 1
                continue
            if any(key not in COOKBOOK_KEYS for key in message):
                errors["message_unrecognized_key"] += 1
            if message.get("role") not in COOKBOOK_ROLES:
                errors["unrecognized_role"] += 1
            content = message.get("content")
            if (not content and not message.get("function_call")) or not isinstance(content, str):
                errors["missing_content"] += 1
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            errors["example_missing_assistant_message"] += 1
    return errors
