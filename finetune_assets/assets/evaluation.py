"""`evaluation_scores`: candidate vs the model in production, on prompts neither was trained on."""

import dagster as dg

from finetune_assets.checks import EVALUATION_CHECKS, candidate_not_worse
from finetune_assets.evaluation.predictor import SCORER_VERSION, fit_predictor
from finetune_assets.evaluation.scoring import comparison_table, score_model
from finetune_assets.finetuning import make_backend
from finetune_assets.k8s import model_step_resources
from finetune_assets.observability import report_evaluation
from finetune_assets.partitions import cycle_asset
from finetune_assets.progress import reporter
from finetune_assets.reporting import evaluation_plot, image_markdown
from finetune_assets.resources.config import PipelineConfigResource
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
) -> dg.MaterializeResult:
    settings = pipeline.get()
    db = store.get()
    model = db.latest_model(context.partition_key)
    if model is None or model["status"] != "succeeded":
        raise dg.Failure(f"no successfully fine-tuned model for cycle {context.partition_key}")
    champion_id = db.production_model(default=settings.base_model)
    holdout = db.load_examples(model["dataset_id"], "holdout")[: settings.evaluation.max_holdout_examples]
    if len(holdout) < settings.evaluation.min_holdout_examples:
        raise dg.Failure(
            f"only {len(holdout)} held-out examples for cycle {context.partition_key}; "
            f"evaluation.min_holdout_examples is {settings.evaluation.min_holdout_examples}"
        )
    predictor = fit_predictor(db.history_for_predictor(settings.min_impressions))
    backend = make_backend(settings.backend, settings.resolved_state_dir())
    options = {
        "max_new_tokens": settings.evaluation.max_new_tokens,
        "seed": settings.evaluation.generation_seed,
    }
    say = reporter(context.log.info)
    say(f"evaluation 1/2: candidate {model['model_id']} on {len(holdout)} held-out prompts")
    candidate = score_model(backend.load(model["model_id"]), holdout, predictor, **options)
    say(f"evaluation 2/2: champion {champion_id} on {len(holdout)} held-out prompts")
    champion = score_model(backend.load(champion_id), holdout, predictor, **options)
    scores = {"candidate": candidate.as_dict(), "champion": champion.as_dict()}
    check = candidate_not_worse(scores, settings.evaluation.max_relative_regression)
    db.record_evaluation(
        partition_key=context.partition_key,
        candidate=model["model_id"],
        champion=champion_id,
        passed=check.passed,
        scores={**scores, "n_holdout": len(holdout), "scorer_version": SCORER_VERSION},
    )
    report_evaluation(scores, passed=check.passed, warn=context.log.warning)
    with tracking.run(context, step="evaluation_scores") as mlflow_run:
        mlflow_run.log_metrics({f"{who}_{k}": v for who, row in scores.items() for k, v in row.items()})
    reference = predictor.mean([e.completion for e in holdout])
    return dg.MaterializeResult(
        metadata={
            "candidate_model": model["model_id"],
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
        },
        check_results=[check],
    )
