"""The gates: blocking asset checks and the plain functions behind them.

Each check is a pure function returning `dg.AssetCheckResult`, unit-tested without Dagster. The assets run
them on the data they just produced and return the results with their materialization; every spec is
blocking with ERROR severity, so a failure stops everything downstream in the run. The outcome is also
written to the store (dataset status, evaluation `passed`) so later runs consult it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from finetune_assets.experiments.stats.sequential import SEQUENTIAL_SRM_ALPHA
from finetune_assets.finetuning.base import TrainingResult
from finetune_assets.finetuning.dataset import ValidPost, approx_token_count, cookbook_format_errors
from finetune_assets.finetuning.pii import contains_pii
from finetune_assets.settings import Settings

CHAT_FORMAT_RULES = "https://cookbook.openai.com/examples/chat_finetuning_data_prep"


def _spec(name: str, asset: str, description: str, **metadata: Any) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset, blocking=True, description=description, metadata=metadata)


TRAINING_DATA_CHECKS = [
    _spec("enough_examples", "training_data", "At least `training_data_threshold` new training examples."),
    _spec("engagement_floor", "training_data", "Every example's engagement rate is at least the threshold."),
    _spec("impressions_floor", "training_data", "Every example has at least `min_impressions` impressions."),
    _spec("chat_format", "training_data", "OpenAI chat format (cookbook checks).", rules=CHAT_FORMAT_RULES),
    _spec("token_limit", "training_data", "No example exceeds `max_tokens_per_example`."),
    _spec("no_duplicates", "training_data", "No example repeats another, in this set or an earlier one."),
    _spec("no_pii", "training_data", "No e-mail address, phone, card or US social security number in any example."),
    _spec(
        "cost_within_budget",
        "training_data",
        "Estimated OpenAI fine-tuning cost within `openai.max_cost_usd`, before anything is uploaded "
        "(local backend: no charge).",
    ),
]
FINE_TUNED_MODEL_CHECKS = [
    _spec("job_succeeded", "fine_tuned_model", "The fine-tuning job finished with status succeeded."),
    _spec("losses_finite", "fine_tuned_model", "Every training and validation loss is finite."),
]
EVALUATION_CHECKS = [
    _spec(
        "candidate_not_worse",
        "evaluation_scores",
        "Candidate within `max_relative_regression` of the champion on held-out loss and predicted engagement.",
    ),
]
AB_TEST_OUTCOME_CHECKS = [
    _spec(
        "no_sample_ratio_mismatch",
        "ab_test_outcome",
        "Users per arm match the configured split (final χ² and the hourly sequential test).",
    ),
    _spec("enough_data", "ab_test_outcome", "Each arm has at least `min_users_per_arm` users."),
]


def _result(name: str, passed: bool, description: str, **metadata: Any) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        passed=passed,
        description=description,
        metadata=metadata,
        severity=dg.AssetCheckSeverity.ERROR,
    )


# -- training_data ---------------------------------------------------------------------------------------------


def enough_examples(n_train: int, settings: Settings) -> dg.AssetCheckResult:
    threshold = settings.training_data_threshold
    passed = n_train >= threshold
    description = (
        f"{n_train} training examples (threshold {threshold})"
        if passed
        else f"only {n_train} training examples; training_data_threshold is {threshold}: no fine-tune starts"
    )
    return _result("enough_examples", passed, description, n_train=n_train, threshold=threshold)


def engagement_floor(posts: Sequence[ValidPost], settings: Settings) -> dg.AssetCheckResult:
    below = [p.example.post_id for p in posts if p.engagement_rate < settings.engagement_threshold]
    lowest = min((p.engagement_rate for p in posts), default=0.0)
    return _result(
        "engagement_floor",
        not below,
        f"{len(below)} examples below engagement rate {settings.engagement_threshold}"
        + (f" (e.g. post {below[0]})" if below else ""),
        min_engagement_rate=float(lowest),
        threshold=settings.engagement_threshold,
    )


def impressions_floor(posts: Sequence[ValidPost], settings: Settings) -> dg.AssetCheckResult:
    below = [p.example.post_id for p in posts if p.impressions < settings.min_impressions]
    return _result(
        "impressions_floor",
        not below,
        f"{len(below)} examples below {settings.min_impressions} impressions"
        + (f" (e.g. post {below[0]})" if below else ""),
        min_impressions=min((p.impressions for p in posts), default=0),
        threshold=settings.min_impressions,
    )


def chat_format(lines: Sequence[Any]) -> dg.AssetCheckResult:
    errors = cookbook_format_errors(lines)
    failing = {k: v for k, v in errors.items() if v}
    return _result(
        "chat_format",
        not failing,
        "all examples in OpenAI chat format" if not failing else f"format errors: {failing}",
        **errors,
    )


def token_limit(posts: Sequence[ValidPost], settings: Settings) -> dg.AssetCheckResult:
    if settings.backend == "openai":  # tiktoken, the model's encoding (or labelled cl100k_base), its own limit
        from finetune_assets.finetuning.tokens import counter_for_model, effective_token_limit

        counter = counter_for_model(settings.base_model)
        limit = effective_token_limit(settings.base_model, settings.max_tokens_per_example, counter.approximate)
        counts = [counter.example_tokens(p.example.messages) for p in posts]
        counting = counter.label
    else:
        limit = settings.max_tokens_per_example
        counts = [approx_token_count(p.example.messages) for p in posts]
        counting = "approximate (words and punctuation + per-message overhead)"
    over = sum(1 for c in counts if limit is not None and c > limit)
    return _result(
        "token_limit",
        over == 0,
        f"{over} examples over {limit} tokens ({counting})",
        max_tokens=max(counts, default=0),
        limit=limit,
        counting=counting,
    )


def cost_within_budget(train: Sequence[ValidPost], settings: Settings) -> dg.AssetCheckResult:
    """The OpenAI cost gate (billing tokens x epochs x the model's price), run before any upload."""
    if settings.backend != "openai":
        return _result(
            "cost_within_budget",
            True,
            f"{settings.backend} backend: trains on our own hardware, no per-token charge",
            backend=settings.backend,
            estimated_cost_usd=0.0,
        )
    from finetune_assets.finetuning.tokens import preflight

    report = preflight(
        [{"messages": list(p.example.messages)} for p in train],
        settings.base_model,
        prices=settings.openai.training_price_per_million_tokens,
        n_epochs=settings.openai.hyperparameters.n_epochs,
        max_tokens_per_example=settings.max_tokens_per_example,
    )
    cost, budget = report.estimated_cost_usd, settings.openai.max_cost_usd
    passed = cost is not None and cost <= budget
    if cost is None:
        description = f"no price for {settings.base_model} in openai.training_price_per_million_tokens"
    else:
        description = (
            f"estimated ${cost:.4f} = {report.billing_tokens:,} billing tokens x {report.n_epochs} epochs x "
            f"${report.price_per_million}/1M tokens ({report.encoding}); openai.max_cost_usd is ${budget:.2f}"
            + ("" if passed else ": refused, nothing is uploaded")
        )
    return _result(
        "cost_within_budget", passed, description, backend="openai", max_cost_usd=budget, **report.as_metadata()
    )


def no_duplicates(posts: Sequence[ValidPost], previously_trained: frozenset[str]) -> dg.AssetCheckResult:
    hashes = [p.content_hash for p in posts]
    within = len(hashes) - len(set(hashes))
    earlier = sum(1 for h in hashes if h in previously_trained)
    return _result(
        "no_duplicates",
        within == 0 and earlier == 0,
        f"{within} duplicates within the set, {earlier} of examples already trained on",
        duplicates_within=within,
        duplicates_of_trained=earlier,
    )


def no_pii(posts: Sequence[ValidPost]) -> dg.AssetCheckResult:
    flagged = [p.example.post_id for p in posts if any(contains_pii(m["content"]) for m in p.example.messages)]
    return _result(
        "no_pii",
        not flagged,
        f"{len(flagged)} examples contain an e-mail address, phone, card or social security number"
        + (f" (e.g. post {flagged[0]})" if flagged else ""),
        flagged=len(flagged),
    )


def training_data_results(
    train: Sequence[ValidPost],
    holdout: Sequence[ValidPost],
    settings: Settings,
    previously_trained: frozenset[str],
) -> list[dg.AssetCheckResult]:
    everything = [*train, *holdout]
    return [
        enough_examples(len(train), settings),
        engagement_floor(everything, settings),
        impressions_floor(everything, settings),
        chat_format([{"messages": list(p.example.messages)} for p in everything]),
        token_limit(everything, settings),
        no_duplicates(everything, previously_trained),
        no_pii(everything),
        cost_within_budget(train, settings),
    ]


# -- fine_tuned_model ------------------------------------------------------------------------------------------


def fine_tune_results(result: TrainingResult) -> list[dg.AssetCheckResult]:
    losses = [loss for _, loss in result.losses] + [loss for _, loss in result.validation_losses]
    non_finite = sum(1 for loss in losses if not math.isfinite(loss))
    succeeded = result.status == "succeeded"
    return [
        _result(
            "job_succeeded",
            succeeded,
            f"job {result.job_id} {result.status}" + (f": {result.error}" if result.error else ""),
            job_id=result.job_id,
            status=result.status,
        ),
        _result(
            "losses_finite",
            bool(losses) and non_finite == 0,
            f"{non_finite} of {len(losses)} losses are not finite" if losses else "no loss was recorded",
            n_losses=len(losses),
            non_finite=non_finite,
        ),
    ]


# -- evaluation_scores -----------------------------------------------------------------------------------------


def candidate_not_worse(scores: Mapping[str, Mapping[str, float]], max_regression: float) -> dg.AssetCheckResult:
    """Lower loss is better, higher predicted engagement is better; each may regress by `max_regression`.

    A model served by an API that cannot score text has no `heldout_loss` in its row: the comparison then
    rests on predicted engagement alone, and the result says so (`heldout_loss_compared: False`).
    """
    candidate, champion = scores["candidate"], scores["champion"]
    problems = []
    loss_compared = "heldout_loss" in candidate and "heldout_loss" in champion
    if loss_compared and candidate["heldout_loss"] > champion["heldout_loss"] * (1 + max_regression):
        problems.append(f"held-out loss {candidate['heldout_loss']:.4f} vs champion {champion['heldout_loss']:.4f}")
    floor = champion["predicted_engagement"] * (1 - max_regression)
    if candidate["predicted_engagement"] < floor:
        problems.append(
            f"predicted engagement {candidate['predicted_engagement']:.4f} vs champion "
            f"{champion['predicted_engagement']:.4f}"
        )
    return _result(
        "candidate_not_worse",
        not problems,
        (
            "candidate is worse than the champion: " + "; ".join(problems)
            if problems
            else "candidate is not worse than the champion"
        )
        + ("" if loss_compared else " (held-out loss not available from the API: predicted engagement only)"),
        max_relative_regression=max_regression,
        heldout_loss_compared=loss_compared,
        **{f"{who}_{metric}": float(value) for who, row in scores.items() for metric, value in row.items()},
    )


# -- ab_test_outcome -------------------------------------------------------------------------------------------


def no_sample_ratio_mismatch(
    srm_p: float, threshold: float, users: Mapping[str, int], sequential_p: float = 1.0
) -> dg.AssetCheckResult:
    """The final χ² and the hourly sequential test (its running-minimum anytime p) must both pass."""
    return _result(
        "no_sample_ratio_mismatch",
        srm_p >= threshold and sequential_p >= SEQUENTIAL_SRM_ALPHA,
        f"SRM χ² p = {srm_p:.4g} (alarm below {threshold}), sequential anytime p = {sequential_p:.4g} (alarm below "
        f"{SEQUENTIAL_SRM_ALPHA:g}); users per arm {dict(users)}",
        srm_p_value=float(srm_p),
        srm_sequential_p=float(sequential_p),
        threshold=threshold,
    )


def enough_data(users: Mapping[str, int], minimum: int) -> dg.AssetCheckResult:
    short = {arm: n for arm, n in users.items() if n < minimum}
    arms_missing = {"control", "treatment"} - set(users)
    passed = not short and not arms_missing
    return _result(
        "enough_data",
        passed,
        f"users per arm {dict(users)}; minimum {minimum}"
        + (f"; missing arms {sorted(arms_missing)}" if arms_missing else ""),
        minimum=minimum,
        **{f"users_{arm}": n for arm, n in users.items()},
    )
