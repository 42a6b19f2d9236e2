"""`evaluation_scores`: candidate vs the model in production, on prompts neither was trained on."""

from typing import Any

import dagster as dg

from finetune_assets.checks import EVALUATION_CHECKS, candidate_not_worse
from finetune_assets.deployment.k8s import model_step_resources
from finetune_assets.evaluation.judge import judge_with
from finetune_assets.evaluation.predictor import SCORER_VERSION, LazyPredictor
from finetune_assets.evaluation.scoring import LazyModel, comparison_table, predicted_engagement, score_model
from finetune_assets.finetuning.runner import backend_errors, backend_for
from finetune_assets.partitions import cycle_asset
from finetune_assets.reporting.metadata import evaluation_plot, image_markdown
from finetune_assets.reporting.metrics import report_evaluation
from finetune_assets.reporting.progress import reporter
from finetune_assets.resources.cache import RedisResource
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.openai import OpenAIResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.resources.tracking import TrackingResource


@cycle_asset(
    deps=["fine_tuned_model"],
    check_specs=EVALUATION_CHECKS,
    kinds={"pytorch"},
    op_tags=model_step_resources(),
)
def evaluation_scores(
    context: dg.AssetExecutionContext,
    pipeline: PipelineConfigResource,
    store: StoreResource,
    tracking: TrackingResource,
    redis: RedisResource,
    openai: OpenAIResource,
) -> dg.MaterializeResult:
    settings = pipeline.get()
    db = store.get()
    model = db.latest_model(context.partition_key)
    if model is None or model.status != "succeeded":
        raise dg.Failure(f"no successfully fine-tuned model for cycle {context.partition_key}")
    champion_id = db.production_model(default=settings.base_model)
    holdout = db.load_examples(model.dataset_id, "holdout")[: settings.evaluation.max_holdout_examples]
    if len(holdout) < settings.evaluation.min_holdout_examples:
        raise dg.Failure(
            f"only {len(holdout)} held-out examples for cycle {context.partition_key}; "
            f"evaluation.min_holdout_examples is {settings.evaluation.min_holdout_examples}"
        )
    # Generations, losses and scores come from the cache where it has them; models load and the predictor
    # fits only on a miss, so a rerun on the same candidate generates and scores nothing.
    cache = redis.evaluation_cache(
        ttl_seconds=round(settings.evaluation.cache_ttl_hours * 3600),
        warn=context.log.warning,
        local_scope=str(settings.resolved_state_dir()),
    )
    predictor = LazyPredictor(db.history_for_predictor(settings.min_impressions))
    backend = backend_for(settings, db, lambda: openai.client(settings.openai))
    options = {
        "max_new_tokens": settings.evaluation.max_new_tokens,
        "seed": settings.evaluation.generation_seed,
    }
    say = reporter(context.log.info)
    say(f"evaluation 1/2: candidate {model.model_id} on {len(holdout)} held-out prompts")
    candidate_model = LazyModel(model.model_id, lambda: backend.load(model.model_id))
    champion_model = LazyModel(champion_id, lambda: backend.load(champion_id))
    with backend_errors(backend):  # an API error (redacted), an open circuit breaker: one clear line
        candidate = score_model(candidate_model, holdout, predictor, cache=cache, **options)
        say(f"evaluation 2/2: champion {champion_id} on {len(holdout)} held-out prompts")
        champion = score_model(champion_model, holdout, predictor, cache=cache, **options)
    scores = {"candidate": candidate.as_dict(), "champion": champion.as_dict()}
    judge: dict[str, Any] = {}
    if settings.evaluation.judge_model:  # pairwise LLM judge, alongside (not instead of) the scores above
        say(f"evaluation: judge {settings.evaluation.judge_model} compares {len(holdout)} candidate/champion pairs")
        judge_model = judge_with(
            openai.client_or_failure(settings),
            settings.evaluation.judge_model,
            cache=cache,
            seed=settings.evaluation.generation_seed,
            concurrency=settings.openai.chat_concurrency,
        )
        with backend_errors(backend):
            report = judge_model.compare([e.prompt for e in holdout], candidate.generations, champion.generations)
        judge = {
            **report.as_metadata(),
            "judge_verdicts": dg.MetadataValue.json(
                [
                    {"post_id": e.post_id, "candidate_position": v.candidate_position, "winner": v.winner}
                    for e, v in zip(holdout, report.verdicts, strict=True)
                ]
            ),
        }
    check = candidate_not_worse(scores, settings.evaluation.max_relative_regression)
    db.record_evaluation(
        partition_key=context.partition_key,
        candidate=model.model_id,
        champion=champion_id,
        passed=check.passed,
        scores={**scores, "n_holdout": len(holdout), "scorer_version": SCORER_VERSION},
    )
    report_evaluation(scores, passed=check.passed, warn=context.log.warning)
    with tracking.run(context, step="evaluation_scores") as mlflow_run:
        mlflow_run.log_metrics({f"{who}_{k}": v for who, row in scores.items() for k, v in row.items()})
        if judge:
            mlflow_run.log_metric("judge_candidate_win_rate", judge["judge_candidate_win_rate"])
    reference = predicted_engagement(predictor, [e.completion for e in holdout], cache)
    context.log.info(f"evaluation cache ({cache.describe()}): {cache.hits} hits, {cache.misses} misses")
    return dg.MaterializeResult(
        metadata={
            "candidate_model": model.model_id,
            "champion_model": champion_id,
            "n_holdout": len(holdout),
            "candidate_heldout_loss": candidate.heldout_loss,
            "champion_heldout_loss": champion.heldout_loss,
            "candidate_predicted_engagement": candidate.predicted_engagement,
            "champion_predicted_engagement": champion.predicted_engagement,
            "comparison": dg.MetadataValue.md(comparison_table(candidate, champion, reference)),
            "evaluation_plot": dg.MetadataValue.md(
                image_markdown(
                    evaluation_plot(scores, reference_engagement=reference),
                    "candidate vs champion",
                    f"On {len(holdout)} held-out prompts; the dashed line is the predicted engagement of the real "
                    "held-out posts.",
                )
            ),
            "candidate_samples": dg.MetadataValue.json(list(candidate.samples)),
            "champion_samples": dg.MetadataValue.json(list(champion.samples)),
            "scorer_version": SCORER_VERSION,
            "predictor_training_posts": predictor.n_posts,
            **cache.metadata(),
            "heldout_loss_available": candidate.heldout_loss is not None and champion.heldout_loss is not None,
            **judge,
        },
        check_results=[check],
    )
