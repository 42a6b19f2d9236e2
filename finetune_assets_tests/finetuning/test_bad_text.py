"""Hostile text in the posts table is excluded and counted, never a crash: a seeded fuzz over prompts and
completions, and a lone surrogate through the real collection transaction (SQLite and Postgres)."""

from __future__ import annotations

import json
import random
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_assets.assets.training_data import collect_training_data
from finetune_assets.finetuning.dataset import (
    Limits,
    RejectReason,
    ValidPost,
    select_examples,
    text_defect,
    validate_post,
)
from finetune_assets.settings import load_settings
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests.conftest import write_config

LIMITS = Limits(max_prompt_chars=8000, max_completion_chars=4000, max_tokens_per_example=1024)
FUZZ_ROWS = 4000

CONTROLS = frozenset(map(chr, (*range(0x20), *range(0x7F, 0xA0)))) - set("\t\n\r")
PIECES = (
    "Fresh bread today",
    " ",
    "\n",
    "\t",
    "\r\n",
    "café",
    "🍞",
    "👩‍👩‍👧",  # zero-width joiners
    "🇫🇷",
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "שלום",
    "مرحبا",
    "漢字",
    "e\u0301",  # combining accent
    "\ufeff",
    "\u2028",
    "\uffff",
    "\U0010ffff",
    "\x00",
    "\x07",
    "\x0b",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\x9b",
    "\ud800",
    "\udfff",
    "\ud83d",  # half of an emoji's surrogate pair
    "@",
    "jane@example.com",
    "4111 1111 1111 1111",
    "+1 (415) 555-0199",
    "078-05-1120",
    "2026-12-07",
    '"',
    "\\",
    "{",
    "]",
)
CLEAN_PIECES = tuple(p for p in PIECES if not any(0xD800 <= ord(c) <= 0xDFFF or c in CONTROLS for c in p))
ODD_JSON = (
    "",
    "null",
    "{}",
    "[]",
    "[[]]",
    "NaN",
    '"just a string"',
    "[" * 5000,
    '{"a":' * 3000,
    "[" + "9" * 5000 + "]",
    '[{"role": "user", "content": ' + "1" * 5000 + "}]",
    '[{"role": "user", "content": "\\ud800"}]',
    '[{"role": "user", "content": "ok\\u0000"}]',
    '[{"role": "user", "content": "\\udc00\\ud800"}]',
    '[{"role": "user", "content": "\\ud83d\\ude00 fine"}]',
    '[{"role": ["user"], "content": "x"}]',
    '[{"role": {"r": 1}, "content": "x"}]',
    '[{"role": null, "content": "x"}]',
    '[{"role": "user", "content": ["x"]}]',
    '[{"role": "assistant", "content": "x"}]',
    '[{"role": "user", "content": "x"}, 7]',
    '[{"role": "user", "content": "x", "name": "\\u0000"}]',
    '[{"role": "user\\u0000", "content": "x"}]',
    "\ud800",
)
NON_STRINGS: tuple[Any, ...] = (None, 0, 42, -1.5, float("nan"), True, b"bytes", bytearray(b"x"), ["x"], {"a": 1})


def fuzz_text(rng: random.Random) -> str:
    if rng.random() < 0.03:
        return rng.choice(PIECES) * rng.randint(1_000, 30_000)  # huge
    if rng.random() < 0.2:  # any code point, surrogates and controls included
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(0, 40)))
    pieces = CLEAN_PIECES if rng.random() < 0.5 else PIECES  # half reach the PII scan, the tokens and the hash
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))


def fuzz_prompt(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(ODD_JSON)
    if roll < 0.2:
        return rng.choice(NON_STRINGS)
    messages: list[Any] = [
        {
            "role": rng.choice(("system", "user", "user", "user", "user", "assistant", "User", 3)),
            "content": fuzz_text(rng),
        }
        for _ in range(rng.randint(1, 2))
    ]
    if rng.random() < 0.1:
        messages[0]["content"] = rng.choice(NON_STRINGS)
    if rng.random() < 0.1:
        return messages  # a JSON column hands the driver's list over, not a string
    # ensure_ascii writes "\ud800" escapes; bytes content becomes a list of numbers
    text = json.dumps(messages, ensure_ascii=rng.random() < 0.5, default=list)
    return text[: rng.randrange(len(text))] if rng.random() < 0.05 else text


def fuzz_row(rng: random.Random, post_id: int) -> dict[str, Any]:
    completion = rng.choice(NON_STRINGS) if rng.random() < 0.05 else fuzz_text(rng)
    counts: list[Any] = [rng.randint(100, 1000), rng.randint(0, 100)]
    if rng.random() < 0.05:
        counts[rng.randrange(2)] = rng.choice(NON_STRINGS)
    return {
        "post_id": post_id,
        "prompt_messages": fuzz_prompt(rng),
        "completion": completion,
        "impressions": counts[0],
        "engagements": counts[1],
    }


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def has_controls(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text)


def test_text_defect_is_exactly_unencodable_or_control_characters() -> None:
    rng = random.Random(15)
    for _ in range(3000):
        text = fuzz_text(rng)
        expected = (
            RejectReason.UNENCODABLE_TEXT
            if not encodable(text)
            else RejectReason.CONTROL_CHARACTERS
            if has_controls(text)
            else None
        )
        assert text_defect([text]) == expected, ascii(text[:80])


def test_no_fuzzed_row_makes_validation_or_selection_raise() -> None:
    rng = random.Random(2026)
    rows = [fuzz_row(rng, post_id) for post_id in range(1, FUZZ_ROWS + 1)]
    outcomes = [validate_post(row, LIMITS) for row in rows]
    for row, outcome in zip(rows, outcomes, strict=True):
        assert isinstance(outcome, ValidPost | RejectReason)
        if isinstance(outcome, ValidPost):  # what reaches a hash, a file or Postgres is clean text
            for message in outcome.example.messages:
                assert encodable(message["content"]) and not has_controls(message["content"]), row["post_id"]
    reasons = {o for o in outcomes if isinstance(o, RejectReason)}
    assert {RejectReason.UNENCODABLE_TEXT, RejectReason.CONTROL_CHARACTERS, RejectReason.INVALID_PROMPT_JSON} <= reasons
    assert sum(isinstance(o, ValidPost) for o in outcomes) > FUZZ_ROWS // 50, "the fuzz must reach the hash too"

    selection = select_examples(rows, LIMITS, holdout_fraction=0.2, batch_size=97)
    assert len(selection.train) + len(selection.holdout) + len(selection.rejected) == len(rows)
    assert sum(selection.rejected_by_reason.values()) == len(selection.rejected)
    assert set(selection.rejected_by_reason) <= {str(r) for r in RejectReason}


def post(post_id: int, prompt: str, completion: str) -> dict[str, Any]:
    stamp = datetime(2026, 11, 10, tzinfo=UTC)
    return {
        "post_id": post_id,
        "created_at": stamp,
        "user_id": f"u{post_id}",
        "model_id": "base",
        "experiment_id": None,
        "variant": None,
        "prompt_messages": prompt,
        "completion": completion,
        "impressions": 500,
        "engagements": 50,
        "updated_at": stamp,
    }


GOOD_PROMPT = json.dumps([{"role": "user", "content": "A post about bread."}])
HOSTILE = {
    # The escapes are plain ASCII in the table; json.loads turns them into what cannot be encoded or stored.
    101: (r'[{"role": "user", "content": "bread \ud800"}]', "Fresh loaves today", RejectReason.UNENCODABLE_TEXT),
    102: (r'[{"role": "user", "content": "bread \u0000"}]', "Fresh loaves today", RejectReason.CONTROL_CHARACTERS),
    103: (GOOD_PROMPT, "Fresh loaves \x9b today", RejectReason.CONTROL_CHARACTERS),
    104: (GOOD_PROMPT, "Fresh loaves \x1b[1mtoday", RejectReason.CONTROL_CHARACTERS),
    105: ("[" * 5000, "Fresh loaves today", RejectReason.INVALID_PROMPT_JSON),
}


def collect_hostile_table(store: PlatformStore, tmp_path: Path, state_dir: Path) -> None:
    good = [post(i, GOOD_PROMPT, f"Fresh loaves number {i} 🍞, warm at 8am") for i in range(1, 31)]
    store.insert_posts([*good, *(post(pid, p, c) for pid, (p, c, _) in HOSTILE.items())])
    settings = load_settings(write_config(tmp_path / "c.yaml", state_dir, training_data_threshold=10))
    collected = store.retrying_transaction(
        lambda conn: collect_training_data(conn, store, settings, "2026-11-15"), what="hostile collection"
    )
    assert collected.passed, [r.description for r in collected.results if not r.passed]
    kept = {p.example.post_id for p in (*collected.selection.train, *collected.selection.holdout)}
    assert kept == set(range(1, 31)), "every good row survives"
    assert dict(collected.selection.rejected) == {pid: reason for pid, (_, _, reason) in HOSTILE.items()}
    assert collected.selection.rejected_by_reason == {
        "control_characters": 3,
        "invalid_prompt_json": 1,
        "unencodable_text": 1,
    }
    ledger = {pid: reason for pid, role, reason in store.ledger_posts(collected.dataset_id) if role == "rejected"}
    assert ledger == {pid: str(reason) for pid, (_, _, reason) in HOSTILE.items()}


def test_a_lone_surrogate_row_is_excluded_with_its_reason_and_good_rows_survive() -> None:
    rows = [
        post(1, GOOD_PROMPT, "Fresh loaves number 1"),
        post(3, r'[{"role": "user", "content": "\ud800"}]', "Fresh loaves"),  # the escape, as the table holds it
        post(2, GOOD_PROMPT, "Fresh loaves number 2"),
    ]
    selection = select_examples(rows, LIMITS, holdout_fraction=0.0)
    assert [p.example.post_id for p in selection.train] == [1, 2]
    assert selection.rejected == [(3, RejectReason.UNENCODABLE_TEXT)]
    assert selection.rejected_by_reason == {"unencodable_text": 1}


def test_hostile_rows_in_a_sqlite_table_are_counted_not_fatal(
    store: PlatformStore, tmp_path: Path, state_dir: Path
) -> None:
    collect_hostile_table(store, tmp_path, state_dir)


def test_hostile_rows_in_a_postgres_table_are_counted_not_fatal(
    pg_store: PlatformStore, tmp_path: Path, state_dir: Path
) -> None:
    collect_hostile_table(pg_store, tmp_path, state_dir)
