"""P6: evaluation calls against an API with 100 ms latency. Goal: with concurrency C, N calls take at most
1.2 x N x latency / C of wall time (the ideal pipelined time plus 20 %).

What is timed is what evaluation runs: `OpenAITextModel.generate` (the openai SDK client built from settings,
its circuit breaker and the `chat_concurrency` limit) over N held-out prompts, against the local
OpenAI-compatible test server (finetune_assets_tests/fake_openai.py) answering each chat completion after
`--latency` seconds. The server's own count of concurrent requests is printed: it must never exceed C. Writes its
lines into docs/performance.md (section `p6_eval_concurrency`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test server lives in finetune_assets_tests

from timing import Report, write_section  # bench/timing.py

from finetune_assets.finetuning.openai_client import OpenAIClient
from finetune_assets.finetuning.openai_model import OpenAITextModel
from finetune_assets.settings import OpenAISettings
from finetune_assets_tests.fake_openai import running_fake_openai


def serve(conn: Connection, latency: float) -> None:
    """The test server in its own process, as the real API is: it does not share the client's GIL."""
    with running_fake_openai() as server:
        server.chat_latency_s = latency
        conn.send((server.base_url, server.api_key))
        while conn.recv() != "stop":
            conn.send((server.chat_calls, server.max_concurrent_chat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=128)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    args = parser.parse_args()
    out = Report()
    prompts = [[{"role": "user", "content": f"Write post {i} about our launch."}] for i in range(args.calls)]
    out(f"P6 {args.calls} chat completions at {args.latency * 1000:.0f} ms server latency (server in its own process)")
    context = multiprocessing.get_context("spawn")
    for concurrency in args.concurrency:
        ours, theirs = context.Pipe()
        process = context.Process(target=serve, args=(theirs, args.latency), daemon=True)
        process.start()
        base_url, api_key = ours.recv()
        try:
            settings = OpenAISettings(base_url=base_url, chat_concurrency=concurrency, max_retries=0)
            model = OpenAITextModel(OpenAIClient.from_settings(settings, api_key), "gpt-4o-mini-2024-07-18")
            model.generate(prompts[:concurrency], max_new_tokens=32, seed=0)  # connections warm
            started = time.perf_counter()
            outputs = model.generate(prompts, max_new_tokens=32, seed=0)
            wall = time.perf_counter() - started
            ours.send("stats")
            calls, in_flight = ours.recv()
        finally:
            ours.send("stop")
            process.join(timeout=10)
        assert len(outputs) == args.calls and calls == args.calls + concurrency
        ideal = args.calls * args.latency / concurrency
        ratio = wall / ideal
        out(
            f"  C={concurrency:>3}: wall {wall:6.3f} s, N*latency/C {ideal:6.3f} s, ratio {ratio:.3f} "
            f"(goal <= 1.2: {'met' if ratio <= 1.2 else 'MISSED'}); the server saw at most {in_flight} in flight"
        )
    write_section("p6_eval_concurrency", out.lines)


if __name__ == "__main__":
    main()
