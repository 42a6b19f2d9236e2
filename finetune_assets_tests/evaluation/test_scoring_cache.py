"""Scoring through the cache: generation, held-out loss and predicted engagement run only for what missed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from finetune_assets.evaluation.cache import EvaluationCache, LocalStore
from finetune_assets.evaluation.predictor import LazyPredictor, fit_predictor
from finetune_assets.evaluation.scoring import LazyModel, predicted_engagement, score_model
from finetune_assets.finetuning.base import ChatExample, Message


def example(i: int) -> ChatExample:
    return ChatExample(
        post_id=i,
        messages=(
            {"role": "system", "content": "Write a post."},
            {"role": "user", "content": f"topic {i}"},
            {"role": "assistant", "content": f"a real post about topic {i}"},
        ),
    )


class CountingModel:
    """A TextModel that records every call: what the cache must spare."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.generate_calls: list[int] = []
        self.loss_calls = 0

    def generate(self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int, seed: int) -> list[str]:
        self.generate_calls.append(len(prompts))
        return [f"{self.model_id} on {p[-1]['content']} (seed {seed}, {max_new_tokens})" for p in prompts]

    def completion_loss(self, examples: Sequence[ChatExample]) -> float:
        self.loss_calls += 1
        return 1.0 + len(examples) / 100


class CountingScorer:
    version = "scorer-v1"

    def __init__(self) -> None:
        self.scored: list[int] = []

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        self.scored.append(len(texts))
        return np.array([len(t) / 1000 for t in texts])


def fresh_cache() -> EvaluationCache:
    return EvaluationCache(LocalStore(), key_prefix="t", ttl_seconds=3600)


def test_a_rerun_makes_no_generation_loss_or_scoring_call() -> None:
    store = LocalStore()
    holdout = [example(i) for i in range(12)]
    model, scorer = CountingModel("ft:a"), CountingScorer()
    first_cache = EvaluationCache(store, key_prefix="t", ttl_seconds=3600)
    first = score_model(model, holdout, scorer, max_new_tokens=20, seed=0, cache=first_cache)
    assert (model.generate_calls, model.loss_calls, scorer.scored) == ([12], 1, [12])
    assert first_cache.stats() == {
        "generation": {"hits": 0, "misses": 12},
        "heldout_loss": {"hits": 0, "misses": 1},
        "predicted_engagement": {"hits": 0, "misses": 12},
    }

    loads: list[str] = []

    def load() -> CountingModel:
        loads.append("ft:a")
        return CountingModel("ft:a")

    rerun_cache = EvaluationCache(store, key_prefix="t", ttl_seconds=3600)
    rerun_scorer = CountingScorer()
    again = score_model(LazyModel("ft:a", load), holdout, rerun_scorer, max_new_tokens=20, seed=0, cache=rerun_cache)
    assert again == first
    assert loads == [] and rerun_scorer.scored == []  # the model was never even loaded
    assert rerun_cache.misses == 0 and rerun_cache.hits == 25


def test_uncached_and_first_cached_runs_agree() -> None:
    holdout = [example(i) for i in range(5)]
    plain = score_model(CountingModel("m"), holdout, CountingScorer(), max_new_tokens=8, seed=3)
    cached = score_model(CountingModel("m"), holdout, CountingScorer(), max_new_tokens=8, seed=3, cache=fresh_cache())
    assert plain == cached


def test_only_the_missing_prompts_are_generated() -> None:
    cache = fresh_cache()
    model, scorer = CountingModel("m"), CountingScorer()
    score_model(model, [example(i) for i in range(6)], scorer, max_new_tokens=8, seed=0, cache=cache)
    score_model(model, [example(i) for i in range(4, 10)], scorer, max_new_tokens=8, seed=0, cache=cache)
    assert model.generate_calls == [6, 4]  # prompts 4 and 5 came from the cache
    assert model.loss_calls == 2  # another held-out set: another loss
    assert scorer.scored == [6, 4]


def test_model_options_and_scorer_version_separate_the_keys() -> None:
    cache = fresh_cache()
    holdout = [example(i) for i in range(3)]
    model = CountingModel("m")
    score_model(model, holdout, CountingScorer(), max_new_tokens=8, seed=0, cache=cache)
    score_model(model, holdout, CountingScorer(), max_new_tokens=8, seed=1, cache=cache)
    score_model(model, holdout, CountingScorer(), max_new_tokens=9, seed=0, cache=cache)
    score_model(CountingModel("other"), holdout, CountingScorer(), max_new_tokens=8, seed=0, cache=cache)
    assert model.generate_calls == [3, 3, 3]
    texts = ["one post", "another post"]
    scorer, newer = CountingScorer(), CountingScorer()
    newer.version = "scorer-v2"
    predicted_engagement(scorer, texts, cache)
    predicted_engagement(newer, texts, cache)
    assert scorer.scored == [2] and newer.scored == [2]


def history(n: int, shift: int = 0) -> list[tuple[str, int, int]]:
    return [(f"post number {i} about things {i % 7}", 200 + i, (i * 7 + shift) % 40) for i in range(n)]


def test_the_lazy_predictor_is_the_fitted_one_and_versioned_by_its_data() -> None:
    rows = history(60)
    lazy = LazyPredictor(rows)
    assert lazy.fits == 0 and lazy.n_posts == 60
    texts = ["post number 3 about things", "something else"]
    assert np.allclose(lazy.predict(texts), fit_predictor(rows).predict(texts))
    assert lazy.fits == 1
    assert lazy.version == LazyPredictor(list(rows)).version == fit_predictor(rows).version
    assert lazy.version != LazyPredictor(history(60, shift=1)).version
    assert lazy.version.startswith("ridge-hashed-ngrams-v1:")


def test_a_cached_predictor_is_never_fitted_on_a_rerun() -> None:
    cache = fresh_cache()
    texts = [f"text {i}" for i in range(10)]
    first = LazyPredictor(history(40))
    value = predicted_engagement(first, texts, cache)
    rerun = LazyPredictor(history(40))
    assert predicted_engagement(rerun, texts, cache) == value
    assert (first.fits, rerun.fits) == (1, 0)
