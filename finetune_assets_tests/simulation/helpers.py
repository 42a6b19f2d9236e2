"""Row classification used by the tests: what the ingestion code is expected to reject, and why."""

from __future__ import annotations

import json
from typing import Any

MIN_RATE = 0.06
MIN_IMPRESSIONS = 100


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and m.get("role") in ("system", "user") and isinstance(m.get("content"), str)
            for m in value
        )
    )


def classify(rows: list[dict[str, Any]]) -> list[str | None]:
    """The defect kind of each row (None for a clean row), judged from the row alone plus earlier rows."""
    seen: set[tuple[str, str]] = set()
    kinds: list[str | None] = []
    for row in rows:
        completion, prompt = row["completion"], row["prompt_messages"]
        kind: str | None = None
        if completion is None:
            kind = "completion_none"
        elif not completion.strip():
            kind = "completion_blank"
        elif len(completion) > 20_000:
            kind = "completion_oversized"
        elif row["impressions"] < 0:
            kind = "negative_impressions"
        elif row["engagements"] > row["impressions"]:
            kind = "engagements_exceed_impressions"
        else:
            try:
                parsed = json.loads(prompt)
            except json.JSONDecodeError:
                kind = "prompt_invalid_json"
            else:
                if not _is_messages(parsed):
                    kind = "prompt_not_messages"
                elif (prompt, completion) in seen:
                    kind = "duplicate"
                else:
                    seen.add((prompt, completion))
        kinds.append(kind)
    return kinds
