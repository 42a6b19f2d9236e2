"""Every gate, passing and failing, as plain functions (no Dagster run needed)."""

import json

from finetune_assets import checks
from finetune_assets.finetuning.base import TrainingResult
from finetune_assets.finetuning.dataset import Limits, ValidPost, validate_post
from finetune_assets.settings import parse_settings

SETTINGS = parse_settings({}, source="test", environ={})
LIMITS = Limits(8000, 4000, 1024)


def post(post_id: int, completion: str = "", impressions: int = 500, engagements: int = 40) -> ValidPost:
    prompt = json.dumps([{"role": "user", "content": "Write a post."}])
    outcome = validate_post(
        {
            "post_id": post_id,
            "prompt_messages": prompt,
            "completion": completion or f"Post number {post_id}",
            "impressions": impressions,
            "engagements": engagements,
        },
        LIMITS,
    )
    assert isinstance(outcome, ValidPost)
    return outcome


def test_enough_examples() -> None:
    assert checks.enough_examples(100, SETTINGS).passed
    failed = checks.enough_examples(42, SETTINGS)
    assert not failed.passed
    assert "only 42 training examples; training_data_threshold is 100" in (failed.description or "")


def test_engagement_and_impressions_floors() -> None:
    good = [post(1), post(2)]
    assert checks.engagement_floor(good, SETTINGS).passed
    assert checks.impressions_floor(good, SETTINGS).passed
    assert not checks.engagement_floor([*good, post(3, engagements=10)], SETTINGS).passed
    assert not checks.impressions_floor([*good, post(4, impressions=50, engagements=10)], SETTINGS).passed


def test_chat_format_reports_cookbook_counters() -> None:
    ok = checks.chat_format([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    assert ok.passed
    bad = checks.chat_format([{"messages": [{"role": "user", "content": "a"}]}])
    assert not bad.passed
    assert bad.metadata["example_missing_assistant_message"].value == 1


def test_token_limit() -> None:
    tight = parse_settings({"max_tokens_per_example": 16}, source="test", environ={})
    assert checks.token_limit([post(1)], SETTINGS).passed
    assert not checks.token_limit([post(1, completion="word " * 40)], tight).passed


def test_duplicates_within_and_against_trained() -> None:
    a, b = post(1, "same text"), post(2, "same text")
    assert checks.no_duplicates([a, post(3)], frozenset()).passed
    assert not checks.no_duplicates([a, b], frozenset()).passed
    assert not checks.no_duplicates([a], frozenset({a.content_hash})).passed


def test_pii() -> None:
    clean = post(1)
    assert checks.no_pii([clean]).passed
    leaked = ValidPost(
        example=clean.example.__class__(
            post_id=9,
            messages=({"role": "user", "content": "x"}, {"role": "assistant", "content": "mail a@b.io"}),
        ),
        content_hash="h",
        impressions=500,
        engagements=40,
    )
    assert not checks.no_pii([clean, leaked]).passed


def result(status: str = "succeeded", losses: list[tuple[int, float]] | None = None) -> TrainingResult:
    return TrainingResult(
        job_id="job-1",
        status=status,  # type: ignore[arg-type]
        model_id="ft:x",
        base_model="base",
        losses=[(1, 2.0), (2, 1.5)] if losses is None else losses,
        validation_losses=[(2, 1.7)],
        trained_tokens=100,
        metrics={},
        error=None if status == "succeeded" else "boom",
    )


def test_fine_tune_gates() -> None:
    assert all(r.passed for r in checks.fine_tune_results(result()))
    failed = {r.check_name: r for r in checks.fine_tune_results(result(status="failed"))}
    assert not failed["job_succeeded"].passed and "boom" in (failed["job_succeeded"].description or "")
    nan = {r.check_name: r for r in checks.fine_tune_results(result(losses=[(1, 2.0), (2, float("nan"))]))}
    assert not nan["losses_finite"].passed


def test_candidate_not_worse() -> None:
    champion = {"heldout_loss": 2.0, "predicted_engagement": 0.06}
    better = {"candidate": {"heldout_loss": 1.8, "predicted_engagement": 0.07}, "champion": champion}
    slightly = {"candidate": {"heldout_loss": 2.03, "predicted_engagement": 0.0595}, "champion": champion}
    worse = {"candidate": {"heldout_loss": 2.5, "predicted_engagement": 0.05}, "champion": champion}
    assert checks.candidate_not_worse(better, 0.02).passed
    assert checks.candidate_not_worse(slightly, 0.02).passed
    failed = checks.candidate_not_worse(worse, 0.02)
    assert not failed.passed
    assert "held-out loss" in (failed.description or "") and "predicted engagement" in (failed.description or "")


def test_ab_outcome_gates() -> None:
    assert checks.no_sample_ratio_mismatch(0.4, 0.001, {"control": 500, "treatment": 510}).passed
    assert not checks.no_sample_ratio_mismatch(1e-6, 0.001, {"control": 500, "treatment": 400}).passed
    assert checks.enough_data({"control": 150, "treatment": 160}, 100).passed
    assert not checks.enough_data({"control": 150, "treatment": 60}, 100).passed
    assert not checks.enough_data({"control": 150}, 100).passed
