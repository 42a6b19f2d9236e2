import json

import pytest

from finetune_assets.finetuning.dataset import (
    Limits,
    RejectReason,
    ValidPost,
    cookbook_format_errors,
    is_holdout,
    select_examples,
    validate_post,
)

LIMITS = Limits(max_prompt_chars=2000, max_completion_chars=500, max_tokens_per_example=200)
PROMPT = json.dumps([{"role": "system", "content": "You write posts."}, {"role": "user", "content": "A post on tea."}])


def row(post_id: int = 1, **overrides: object) -> dict:
    base = {
        "post_id": post_id,
        "prompt_messages": PROMPT,
        "completion": f"Did you know tea number {post_id} is great?",
        "impressions": 500,
        "engagements": 40,
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"completion": None}, RejectReason.MISSING_COMPLETION),
        ({"completion": "   "}, RejectReason.EMPTY_COMPLETION),
        ({"impressions": -5}, RejectReason.NEGATIVE_COUNTS),
        ({"engagements": -1}, RejectReason.NEGATIVE_COUNTS),
        ({"engagements": 900}, RejectReason.ENGAGEMENTS_EXCEED_IMPRESSIONS),
        ({"prompt_messages": "{not json"}, RejectReason.INVALID_PROMPT_JSON),
        ({"prompt_messages": None}, RejectReason.INVALID_PROMPT_MESSAGES),
        ({"prompt_messages": json.dumps({"messages": []})}, RejectReason.INVALID_PROMPT_MESSAGES),
        ({"prompt_messages": json.dumps(["hello"])}, RejectReason.INVALID_PROMPT_MESSAGES),
        (
            {"prompt_messages": json.dumps([{"role": "user", "text": "x"}])},
            RejectReason.INVALID_PROMPT_MESSAGES,
        ),
        (
            {"prompt_messages": json.dumps([{"role": "system", "content": "only system"}])},
            RejectReason.INVALID_PROMPT_MESSAGES,
        ),
        ({"completion": "x" * 501}, RejectReason.OVERSIZED_TEXT),
        (
            {"prompt_messages": json.dumps([{"role": "user", "content": "y" * 2100}])},
            RejectReason.OVERSIZED_TEXT,
        ),
        ({"prompt_messages": "[" * 1500}, RejectReason.INVALID_PROMPT_JSON),
        ({"prompt_messages": '[{"role": ["user"], "content": "x"}]'}, RejectReason.INVALID_PROMPT_MESSAGES),
        ({"prompt_messages": '[{"role": "user", "content": "tea \\ud800"}]'}, RejectReason.UNENCODABLE_TEXT),
        ({"prompt_messages": '[{"role": "user", "content": "tea \\u0000"}]'}, RejectReason.CONTROL_CHARACTERS),
        ({"completion": "Tea \x1b[1mtime"}, RejectReason.CONTROL_CHARACTERS),
        ({"completion": "Tea \x85time"}, RejectReason.CONTROL_CHARACTERS),
        ({"completion": "a." * 240}, RejectReason.TOO_MANY_TOKENS),
        ({"completion": "Write to jane.doe@example.com today"}, RejectReason.PII),
        ({"completion": "Call +1 (415) 555-0199 now"}, RejectReason.PII),
    ],
)
def test_each_malformed_post_is_rejected_with_its_reason(overrides: dict, reason: RejectReason) -> None:
    assert validate_post(row(**overrides), LIMITS) == reason


def test_a_good_post_becomes_a_chat_example() -> None:
    outcome = validate_post(row(), LIMITS)
    assert isinstance(outcome, ValidPost)
    assert [m["role"] for m in outcome.example.messages] == ["system", "user", "assistant"]
    assert outcome.engagement_rate == pytest.approx(0.08)
    assert cookbook_format_errors([{"messages": list(outcome.example.messages)}]) == dict.fromkeys(
        cookbook_format_errors([]), 0
    )


def test_selection_drops_duplicates_and_known_examples_and_counts_every_row() -> None:
    rows = [row(i) for i in range(1, 101)] + [
        row(101, completion=row(5)["completion"]),
        row(102, completion=None),
    ]
    known = frozenset({validate_post(row(7), LIMITS).content_hash})  # type: ignore[union-attr]
    selection = select_examples(rows, LIMITS, holdout_fraction=0.2, known_hashes=known)
    kept = [p.example.post_id for p in selection.train + selection.holdout]
    assert len(kept) + len(selection.rejected) == len(rows)
    assert 7 not in kept and 101 not in kept
    assert selection.rejected_by_reason == {"duplicate": 2, "missing_completion": 1}
    assert {p.example.post_id for p in selection.holdout} == {i for i in kept if is_holdout(i, 0.2)}
    assert 5 < len(selection.holdout) < 40


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
@pytest.mark.parametrize("max_examples", [None, 30])
def test_a_batched_known_hash_lookup_selects_exactly_what_a_set_does(batch_size: int, max_examples: int | None) -> None:
    rows = [row(i) for i in range(1, 61)] + [row(61, completion=row(5)["completion"]), row(62, engagements=900)]
    rows += [row(i) for i in range(63, 80)]
    known = frozenset(validate_post(row(i), LIMITS).content_hash for i in (7, 40, 70))  # type: ignore[union-attr]
    asked: list[int] = []

    def lookup(hashes: object) -> frozenset[str]:
        asked.append(len(hashes))  # type: ignore[arg-type]
        return known.intersection(hashes)  # type: ignore[arg-type]

    expected = select_examples(rows, LIMITS, holdout_fraction=0.2, known_hashes=known, max_examples=max_examples)
    batched = select_examples(
        rows, LIMITS, holdout_fraction=0.2, known_hashes=lookup, max_examples=max_examples, batch_size=batch_size
    )
    assert (batched.train, batched.holdout, batched.rejected) == (expected.train, expected.holdout, expected.rejected)
    assert max(asked) <= batch_size  # one lookup per batch, never the whole history


def test_holdout_assignment_is_stable_and_near_its_fraction() -> None:
    share = sum(is_holdout(i, 0.15) for i in range(20000)) / 20000
    assert 0.14 < share < 0.16
    assert [is_holdout(i, 0.15) for i in range(50)] == [is_holdout(i, 0.15) for i in range(50)]


def test_cookbook_counters() -> None:
    lines = [
        "not a dict",
        {"messages": []},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": "hi", "extra": 1}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
    ]
    assert cookbook_format_errors(lines) == {
        "data_type": 1,
        "missing_messages_list": 1,
        "message_missing_key": 1,
        "message_unrecognized_key": 1,
        "unrecognized_role": 1,
        "missing_content": 1,
        "example_missing_assistant_message": 2,
    }
