"""Candidate vs champion on held-out prompts that no model was trained on.

Two scores per model: the held-out loss of the real high-engagement completions (how well the model
imitates what performed) and the mean predicted engagement of its own generations (what it would earn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from finetune_assets.evaluation.cache import MISSING, EvaluationCache, content_hash
from finetune_assets.evaluation.predictor import SCORER_VERSION
from finetune_assets.finetuning.base import ChatExample, LossUnavailable, Message, TextModel

LOSS_VERSION = "completion-nll-v1"
"""Bump when the held-out loss is computed differently: the cached losses then miss."""
GENERATION_VERSION = "generate-v1"


class TextScorer(Protocol):
    """Scores texts (the engagement predictor). `version` names the scorer and its fit: part of the key."""

    version: str

    def predict(self, texts: Sequence[str]) -> Iterable[float]: ...


class LazyModel:
    """A `TextModel` loaded on first use: a fully cached evaluation never loads the weights."""

    def __init__(self, model_id: str, load: Callable[[], TextModel]) -> None:
        self.model_id = model_id
        self._load = load
        self._model: TextModel | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _get(self) -> TextModel:
        if self._model is None:
            self._model = self._load()
        return self._model

    def generate(self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int, seed: int) -> list[str]:
        return self._get().generate(prompts, max_new_tokens=max_new_tokens, seed=seed)

    def completion_loss(self, examples: Sequence[ChatExample]) -> float:
        return self._get().completion_loss(examples)


@dataclass(frozen=True)
class ModelScores:
    model_id: str
    heldout_loss: float | None  # None: the model's API cannot score text (OpenAI), so there is no loss
    predicted_engagement: float
    samples: tuple[str, ...]
    generations: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        scores = {"predicted_engagement": self.predicted_engagement}
        if self.heldout_loss is not None:
            scores["heldout_loss"] = self.heldout_loss
        return scores


def _uncached() -> EvaluationCache:
    return EvaluationCache(None, key_prefix="", ttl_seconds=1)


def generate_cached(
    model: TextModel,
    prompts: Sequence[Sequence[Message]],
    *,
    max_new_tokens: int,
    seed: int,
    cache: EvaluationCache | None = None,
) -> list[str]:
    """One generation per prompt; `model.generate` runs only for the prompts the cache misses.

    Key parts: (model id, prompt hash, max_new_tokens, seed). With every prompt missing, the model sees the
    whole list, exactly as uncached; a partial miss samples the missing prompts as a smaller batch.
    """
    cache = cache or _uncached()
    options = [f"max_new_tokens={max_new_tokens}", f"seed={seed}", GENERATION_VERSION]
    parts = [(model.model_id, content_hash(list(p)), *options) for p in prompts]
    found = cache.get_many("generation", parts)
    missing = [i for i, value in enumerate(found) if value is MISSING]
    if missing:
        fresh = model.generate([prompts[i] for i in missing], max_new_tokens=max_new_tokens, seed=seed)
        for i, text in zip(missing, fresh, strict=True):
            found[i] = text
        cache.set_many("generation", {parts[i]: found[i] for i in missing})
    return [str(text) for text in found]


def predict_cached(scorer: TextScorer, texts: Sequence[str], cache: EvaluationCache | None = None) -> list[float]:
    """One score per text; the scorer runs only on the misses. Key parts: (scorer version, text hash)."""
    cache = cache or _uncached()
    parts = [(scorer.version, content_hash(text)) for text in texts]
    found = cache.get_many("predicted_engagement", parts)
    missing = [i for i, value in enumerate(found) if value is MISSING]
    if missing:
        fresh = scorer.predict([texts[i] for i in missing])
        for i, score in zip(missing, fresh, strict=True):
            found[i] = float(score)
        cache.set_many("predicted_engagement", {parts[i]: found[i] for i in missing})
    return [float(score) for score in found]


def predicted_engagement(scorer: TextScorer, texts: Sequence[str], cache: EvaluationCache | None = None) -> float:
    """The mean predicted engagement of `texts` (0.0 for none)."""
    scores = predict_cached(scorer, texts, cache)
    return sum(scores) / len(scores) if scores else 0.0


def heldout_loss_cached(
    model: TextModel, holdout: Sequence[ChatExample], cache: EvaluationCache | None = None
) -> float:
    """The model's mean NLL of the held-out completions. Key parts: (model id, prompts hash, completions hash,
    LOSS_VERSION): one value for the whole set, as the loss is token-weighted over it."""
    cache = cache or _uncached()
    parts = [
        model.model_id,
        content_hash([e.prompt for e in holdout]),
        content_hash([e.completion for e in holdout]),
        LOSS_VERSION,
    ]
    return float(cache.get_or_compute("heldout_loss", parts, lambda: float(model.completion_loss(holdout))))


def score_model(
    model: TextModel,
    holdout: Sequence[ChatExample],
    predictor: TextScorer,
    *,
    max_new_tokens: int,
    seed: int,
    cache: EvaluationCache | None = None,
) -> ModelScores:
    """Both scores of one model; with `cache`, only what the cache misses is generated or scored."""
    prompts = [e.prompt for e in holdout]
    generations = generate_cached(model, prompts, max_new_tokens=max_new_tokens, seed=seed, cache=cache)
    try:
        loss: float | None = heldout_loss_cached(model, holdout, cache)
    except LossUnavailable:
        loss = None
    return ModelScores(
        model_id=model.model_id,
        heldout_loss=loss,
        predicted_engagement=predicted_engagement(predictor, generations, cache),
        samples=tuple(generations[:3]),
        generations=tuple(generations),
    )


def _loss(scores: ModelScores) -> str:
    return "n/a (API)" if scores.heldout_loss is None else f"{scores.heldout_loss:.4f}"


def comparison_table(candidate: ModelScores, champion: ModelScores, reference_engagement: float) -> str:
    rows = [
        "| model | role | held-out loss | predicted engagement |",
        "|---|---|---:|---:|",
        f"| `{candidate.model_id}` | candidate | {_loss(candidate)} | {candidate.predicted_engagement:.4%} |",
        f"| `{champion.model_id}` | champion | {_loss(champion)} | {champion.predicted_engagement:.4%} |",
        f"| held-out posts (reference) | real completions | – | {reference_engagement:.4%} |",
    ]
    return "\n".join(rows) + f"\n\nScorer: `{SCORER_VERSION}` (fitted on historical posts only)."
