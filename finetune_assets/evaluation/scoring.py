"""Candidate vs champion on held-out prompts that no model was trained on.

Two scores per model: the held-out loss of the real high-engagement completions (how well the model
imitates what performed) and the mean predicted engagement of its own generations (what it would earn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from finetune_assets.evaluation.predictor import SCORER_VERSION, EngagementPredictor
from finetune_assets.finetuning.base import ChatExample, TextModel


@dataclass(frozen=True)
class ModelScores:
    model_id: str
    heldout_loss: float
    predicted_engagement: float
    samples: tuple[str, ...]

    def as_dict(self) -> dict[str, float]:
        return {"heldout_loss": self.heldout_loss, "predicted_engagement": self.predicted_engagement}


def score_model(
    model: TextModel,
    holdout: Sequence[ChatExample],
    predictor: EngagementPredictor,
    *,
    max_new_tokens: int,
    seed: int,
) -> ModelScores:
    generations = model.generate([e.prompt for e in holdout], max_new_tokens=max_new_tokens, seed=seed)
    return ModelScores(
        model_id=model.model_id,
        heldout_loss=float(model.completion_loss(holdout)),
        predicted_engagement=predictor.mean(generations),
        samples=tuple(generations[:3]),
    )


def comparison_table(candidate: ModelScores, champion: ModelScores, reference_engagement: float) -> str:
    rows = [
        "| model | role | held-out loss | predicted engagement |",
        "|---|---|---:|---:|",
        f"| `{candidate.model_id}` | candidate | {candidate.heldout_loss:.4f} | {candidate.predicted_engagement:.4%} |",
        f"| `{champion.model_id}` | champion | {champion.heldout_loss:.4f} | {champion.predicted_engagement:.4%} |",
        f"| held-out posts (reference) | real completions | – | {reference_engagement:.4%} |",
    ]
    return "\n".join(rows) + f"\n\nScorer: `{SCORER_VERSION}` (fitted on historical posts only)."
