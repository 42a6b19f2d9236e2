"""The pairwise judge: randomized and recorded order, ties without a call, cached verdicts."""

import json
from collections.abc import Callable, Sequence
from typing import Any

from finetune_assets.evaluation.judge import JUDGE_PROMPT_VERSION, PairwiseJudge, parse_answer

PROMPTS = [[{"role": "user", "content": f"post about topic {i}"}] for i in range(40)]


class DictCache:
    """The `get_or_compute` contract of evaluation.cache.EvaluationCache, JSON round-tripped."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], str] = {}

    def get_or_compute(self, kind: str, parts: Sequence[str], compute: Callable[[], Any]) -> Any:
        key = (kind, *parts)
        if key not in self.values:
            self.values[key] = json.dumps(compute())
        return json.loads(self.values[key])


def prefers_longer(calls: list[list[dict[str, str]]]) -> Callable[[list[dict[str, str]]], str]:
    def chat(messages: list[dict[str, str]]) -> str:
        calls.append(messages)
        text = messages[1]["content"]
        a = text.split("Post A:\n")[1].split("\n\nPost B:\n")[0]
        b = text.split("\n\nPost B:\n")[1]
        return "A" if len(a) > len(b) else "B"

    return chat


def test_better_candidate_wins_whatever_the_position_and_the_order_is_mixed_and_recorded() -> None:
    calls: list[list[dict[str, str]]] = []
    judge = PairwiseJudge(prefers_longer(calls), "gpt-judge", seed=1)
    candidate = [f"a much longer and better post {i}" for i in range(40)]
    champion = [f"short {i}" for i in range(40)]
    report = judge.compare(PROMPTS, candidate, champion)
    assert report.count("candidate") == 40 and report.candidate_win_rate == 1.0
    shown_first = report.as_metadata()["judge_candidate_shown_first"]
    assert 8 < shown_first < 32, "positions are randomized"
    assert {v.candidate_position for v in report.verdicts} == {"A", "B"}
    assert report.api_calls == len(calls) == 40
    assert calls[0][0]["role"] == "system" and "Reply with exactly one word" in calls[0][0]["content"]
    # the same pairs are shown in the same order on a rerun
    again = PairwiseJudge(prefers_longer([]), "gpt-judge", seed=1).compare(PROMPTS, candidate, champion)
    assert [v.candidate_position for v in again.verdicts] == [v.candidate_position for v in report.verdicts]


def test_position_bias_shows_up_as_a_balanced_result() -> None:
    report = PairwiseJudge(lambda _: "A", "gpt-judge").compare(PROMPTS, ["x"] * 40, ["y"] * 40)
    assert report.count("candidate") == report.as_metadata()["judge_candidate_shown_first"]
    assert report.count("candidate") + report.count("champion") == 40


def test_identical_outputs_are_a_tie_without_a_call() -> None:
    calls: list[list[dict[str, str]]] = []
    report = PairwiseJudge(prefers_longer(calls), "gpt-judge").compare(
        PROMPTS[:3], ["same", "a", "b"], ["same", "a", "bb"]
    )
    assert [v.winner for v in report.verdicts] == ["tie", "tie", "champion"]
    assert len(calls) == 1 and report.as_metadata()["judge_identical_outputs"] == 2


def test_verdicts_are_cached_by_judge_prompt_input_and_outputs() -> None:
    cache = DictCache()
    calls: list[list[dict[str, str]]] = []
    candidate, champion = [f"candidate text {i}!" for i in range(40)], [f"champion {i}" for i in range(40)]
    first = PairwiseJudge(prefers_longer(calls), "gpt-judge", cache=cache).compare(PROMPTS, candidate, champion)
    second = PairwiseJudge(prefers_longer(calls), "gpt-judge", cache=cache).compare(PROMPTS, candidate, champion)
    assert len(calls) == 40 and first.api_calls == 40 and second.api_calls == 0
    assert second.as_metadata()["judge_cached_verdicts"] == 40
    assert [v.winner for v in second.verdicts] == [v.winner for v in first.verdicts]
    kind, model, version, *hashes = next(iter(cache.values))
    assert (kind, model, version, len(hashes)) == ("judge", "gpt-judge", JUDGE_PROMPT_VERSION, 3)
    other = PairwiseJudge(prefers_longer(calls), "another-judge", cache=cache).compare(PROMPTS, candidate, champion)
    assert other.api_calls == 40, "another judge model is another key"


def test_answers_are_parsed_leniently_and_unreadable_ones_count_as_ties() -> None:
    assert [parse_answer(t) for t in ("A", "b.", " **B**", "Tie", "A: because", "neither", "")] == [
        "A",
        "B",
        "B",
        "TIE",
        "A",
        None,
        None,
    ]
    report = PairwiseJudge(lambda _: "I cannot decide", "j").compare(PROMPTS[:2], ["x", "y"], ["z", "w"])
    assert report.count("tie") == 2 and report.as_metadata()["judge_unreadable_answers"] == 2
