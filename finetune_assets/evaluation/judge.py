"""A pairwise LLM judge: for each held-out prompt, is the candidate's post better than the champion's?

Position bias is real in LLM judges, so which post is shown first is drawn per pair (seeded by the pair's
content, so a rerun shows the same order) and recorded with the verdict. Identical outputs are a tie
without a call. Verdicts are cached (when a cache is given) under (judge model, prompt version, input hash,
both output hashes). The judge reports alongside the foundation's scores; it does not gate on its own.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from finetune_assets.finetuning.base import Message

T = TypeVar("T")

JUDGE_PROMPT_VERSION = "pairwise-post-v1"
JUDGE_SYSTEM = (
    "You judge social media posts. You get the request a post was written for and two candidate posts, "
    "A and B. Decide which post would earn more genuine engagement from the intended audience while "
    "answering the request. Reply with exactly one word: A, B or TIE."
)


class VerdictCache(Protocol):
    """`evaluation.cache.EvaluationCache` satisfies it: JSON values computed once per key."""

    def get_or_compute(self, kind: str, parts: Sequence[str], compute: Callable[[], T]) -> T: ...


def _sha(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_answer(text: str) -> str | None:
    """'A', 'B' or 'TIE' from the judge's reply (first word, punctuation ignored); None when unreadable."""
    words = text.strip().upper().replace(".", " ").replace(":", " ").split()
    if not words:
        return None
    first = words[0].strip("*\"'`()[]")
    return first if first in {"A", "B", "TIE"} else None


@dataclass(frozen=True)
class Verdict:
    winner: str  # candidate | champion | tie
    candidate_position: str | None  # "A" or "B" as shown to the judge; None when no call was needed
    answer: str | None  # the judge's parsed answer; None for identical outputs or an unreadable reply
    called: bool  # judged by the model (now or earlier, from the cache); False: identical outputs, a tie


@dataclass
class JudgeReport:
    judge_model: str
    prompt_version: str
    verdicts: list[Verdict] = field(default_factory=list)
    api_calls: int = 0
    """Judge calls made now; the other judged pairs came from the cache."""

    def count(self, winner: str) -> int:
        return sum(1 for v in self.verdicts if v.winner == winner)

    @property
    def candidate_win_rate(self) -> float:
        """Wins plus half the ties, over all pairs (0.5 = no difference)."""
        n = len(self.verdicts)
        return (self.count("candidate") + 0.5 * self.count("tie")) / n if n else 0.5

    def as_metadata(self) -> dict[str, Any]:
        return {
            "judge_model": self.judge_model,
            "judge_prompt_version": self.prompt_version,
            "judge_pairs": len(self.verdicts),
            "judge_candidate_wins": self.count("candidate"),
            "judge_champion_wins": self.count("champion"),
            "judge_ties": self.count("tie"),
            "judge_identical_outputs": sum(1 for v in self.verdicts if not v.called),
            "judge_unreadable_answers": sum(1 for v in self.verdicts if v.called and v.answer is None),
            "judge_api_calls": self.api_calls,
            "judge_cached_verdicts": sum(1 for v in self.verdicts if v.called) - self.api_calls,
            "judge_candidate_shown_first": sum(1 for v in self.verdicts if v.candidate_position == "A"),
            "judge_candidate_win_rate": self.candidate_win_rate,
        }


class PairwiseJudge:
    """`chat(messages) -> reply` talks to the judge model (the OpenAI client, concurrency-limited there)."""

    def __init__(
        self,
        chat: Callable[[list[Message]], str],
        judge_model: str,
        *,
        cache: VerdictCache | None = None,
        seed: int = 0,
        concurrency: int = 8,
    ) -> None:
        self.chat = chat
        self.judge_model = judge_model
        self.cache = cache
        self.seed = seed
        self.concurrency = concurrency

    def messages(self, prompt: Sequence[Message], first: str, second: str) -> list[Message]:
        request = "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
        return [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Request:\n{request}\n\nPost A:\n{first}\n\nPost B:\n{second}"},
        ]

    def _judge_one(self, prompt: Sequence[Message], candidate: str, champion: str, calls: list[int]) -> Verdict:
        if candidate.strip() == champion.strip():
            return Verdict("tie", None, None, called=False)
        input_hash, cand_hash, champ_hash = _sha([dict(m) for m in prompt]), _sha(candidate), _sha(champion)
        order = random.Random(f"{self.seed}:{input_hash}:{cand_hash}:{champ_hash}")
        position = "A" if order.random() < 0.5 else "B"

        def ask() -> dict[str, Any]:
            calls.append(1)
            first, second = (candidate, champion) if position == "A" else (champion, candidate)
            answer = parse_answer(self.chat(self.messages(prompt, first, second)))
            return {"answer": answer, "candidate_position": position}

        parts = [self.judge_model, JUDGE_PROMPT_VERSION, input_hash, cand_hash, champ_hash]
        outcome = self.cache.get_or_compute("judge", parts, ask) if self.cache is not None else ask()
        answer, shown = outcome["answer"], outcome["candidate_position"]
        winner = "tie" if answer in (None, "TIE") else "candidate" if answer == shown else "champion"
        return Verdict(winner, shown, answer, called=True)

    def compare(
        self, prompts: Sequence[Sequence[Message]], candidate: Sequence[str], champion: Sequence[str]
    ) -> JudgeReport:
        if not len(prompts) == len(candidate) == len(champion):
            raise ValueError(f"{len(prompts)} prompts, {len(candidate)} and {len(champion)} outputs: must match")
        report = JudgeReport(self.judge_model, JUDGE_PROMPT_VERSION)
        if not prompts:
            return report
        calls: list[int] = []
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            report.verdicts = list(
                pool.map(lambda p, a, b: self._judge_one(p, a, b, calls), prompts, candidate, champion)
            )
        report.api_calls = len(calls)
        return report


class ChatClient(Protocol):
    """`finetuning.openai_client.OpenAIClient`: one chat completion's text, concurrency-limited."""

    def chat(
        self,
        model: str,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int,
        seed: int | None = None,
        temperature: float | None = None,
    ) -> str: ...


def judge_with(
    client: ChatClient, judge_model: str, *, cache: VerdictCache | None, seed: int, concurrency: int
) -> PairwiseJudge:
    """A judge that asks `judge_model` through `client`, deterministically (temperature 0, seeded)."""
    return PairwiseJudge(
        lambda messages: client.chat(judge_model, messages, max_tokens=5, seed=seed, temperature=0.0),
        judge_model,
        cache=cache,
        seed=seed,
        concurrency=concurrency,
    )
