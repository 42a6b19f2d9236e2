"""`generated_posts` (the app's table, external) and `training_data` (this cycle's examples, gated)."""

from typing import NamedTuple

import dagster as dg
from sqlalchemy.engine import Connection

from finetune_assets.checks import TRAINING_DATA_CHECKS, training_data_results
from finetune_assets.deployment.k8s import k8s_resources
from finetune_assets.finetuning.base import dataset_hash
from finetune_assets.finetuning.dataset import Limits, Selection, select_examples
from finetune_assets.partitions import cycle_asset
from finetune_assets.reporting.metadata import counts_table, engagement_histogram_plot, histogram, image_markdown
from finetune_assets.reporting.metrics import report_dataset
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.settings import Settings
from finetune_assets.store.platform import PlatformStore, PoolCounts

RATE_BINS_PER_UNIT = 200
"""Engagement-rate histogram bins of width 0.005."""


class Collected(NamedTuple):
    """What one collection transaction read and wrote."""

    superseded: int
    pool: PoolCounts
    rate_bins: dict[int, int]
    selection: Selection
    results: list[dg.AssetCheckResult]
    digest: str
    dataset_id: str
    passed: bool


def collect_training_data(conn: Connection, db: PlatformStore, settings: Settings, partition: str) -> Collected:
    """One cycle's collection in the caller's transaction: release the partition's untrained datasets, count
    the pool, stream the candidates through validation, record the dataset, its ledger rows and its check
    outcome. Everything it writes it read inside the same transaction, so a retried call takes the same rows."""
    limits = Limits(settings.max_prompt_chars, settings.max_completion_chars, settings.max_tokens_per_example)
    superseded = db.release_partition(conn, partition)
    pool = db.pool_counts(settings.min_impressions, settings.engagement_threshold, conn)
    rate_bins = db.engagement_rate_bins(settings.min_impressions, RATE_BINS_PER_UNIT, conn)
    selection = select_examples(
        db.iter_candidate_posts(conn, settings.min_impressions, settings.engagement_threshold),
        limits,
        holdout_fraction=settings.evaluation.holdout_fraction,
        known_hashes=lambda hashes: db.trained_hashes_among(conn, hashes),
        max_examples=settings.max_examples_per_cycle,
    )
    # The no_duplicates check asks the ledger again, for the examples it is about to pass.
    chosen = [p.content_hash for p in (*selection.train, *selection.holdout)]
    results = training_data_results(selection.train, selection.holdout, settings, db.trained_hashes_among(conn, chosen))
    passed = all(r.passed for r in results)
    digest = dataset_hash([p.example for p in selection.train])
    dataset_id = db.record_dataset(
        conn,
        partition_key=partition,
        dataset_hash=digest,
        train=[(p.example.post_id, p.content_hash) for p in selection.train],
        holdout=[(p.example.post_id, p.content_hash) for p in selection.holdout],
        rejected=[(post_id, str(reason)) for post_id, reason in selection.rejected],
        details={"rejected_by_reason": selection.rejected_by_reason, "checks_passed": passed},
    )
    if passed:
        db.set_dataset_status(dataset_id, "validated", conn=conn)
    else:
        db.reject_dataset(dataset_id, conn)
    return Collected(superseded, pool, rate_bins, selection, results, digest, dataset_id, passed)


generated_posts = dg.AssetSpec(
    "generated_posts",
    description=(
        "Posts the content app generated, with the engagement they earned. Owned by the app; read only. "
        "In the embedded demo it is filled by the simulated audience (a demo stand-in for real users)."
    ),
    group_name="finetune",
    kinds={"sql"},
    metadata={
        "owner": "content app",
        "columns": "post_id, created_at, user_id, model_id, experiment_id, "
        "variant, prompt_messages, completion, impressions, engagements, updated_at",
    },
)


@cycle_asset(
    deps=[generated_posts],
    check_specs=TRAINING_DATA_CHECKS,
    kinds={"sql"},
    op_tags=k8s_resources(),
)
def training_data(
    context: dg.AssetExecutionContext, pipeline: PipelineConfigResource, store: StoreResource
) -> dg.MaterializeResult:
    """Posts that performed and that no earlier cycle used, as chat examples; bad rows excluded by reason.

    Collection, the ledger entries and the check outcome commit in one transaction: a crash leaves nothing
    half-written, and a failed check gives the posts back for the next cycle.
    """
    settings = pipeline.get()
    db = store.get()
    partition = context.partition_key

    # A lost connection (a restarted server, a killed backend) rolls the whole collection back and runs it
    # again: the same rows, one dataset, each post in the ledger once.
    superseded, pool, rate_bins, selection, results, digest, dataset_id, passed = db.retrying_transaction(
        lambda conn: collect_training_data(conn, db, settings, partition),
        what=f"training_data {partition}",
        log=context.log.warning,
    )
    rates = [p.engagement_rate for p in selection.train]
    context.log.info(
        f"cycle {partition}: {len(selection.train)} training and {len(selection.holdout)} held-out examples, "
        f"{len(selection.rejected)} rejected {selection.rejected_by_reason}; dataset {dataset_id} "
        f"{'validated' if passed else 'rejected by its checks'}"
    )
    report_dataset(
        train=len(selection.train),
        holdout=len(selection.holdout),
        rejected=len(selection.rejected),
        warn=context.log.warning,
    )
    return dg.MaterializeResult(
        metadata={
            "dataset_id": dataset_id,
            "dataset_hash": digest,
            "dataset_status": "validated" if passed else "rejected",
            "n_train": len(selection.train),
            "n_holdout": len(selection.holdout),
            "n_rejected": len(selection.rejected),
            "rejected_by_reason": dg.MetadataValue.json(selection.rejected_by_reason),
            "rejected_table": dg.MetadataValue.md(counts_table(selection.rejected_by_reason)),
            "pool_unused_posts": pool.unused_posts,
            "pool_below_min_impressions": pool.below_min_impressions,
            "pool_below_engagement_threshold": pool.below_engagement_threshold,
            "pool_qualifying": pool.qualifying,
            "superseded_datasets": superseded,
            "engagement_threshold": settings.engagement_threshold,
            "min_impressions": settings.min_impressions,
            "engagement_rate_distribution": dg.MetadataValue.md(histogram(rates, marker=settings.engagement_threshold)),
            "engagement_rate_plot": dg.MetadataValue.md(
                image_markdown(
                    engagement_histogram_plot(
                        rate_bins,
                        bins_per_unit=RATE_BINS_PER_UNIT,
                        threshold=settings.engagement_threshold,
                        min_impressions=settings.min_impressions,
                    ),
                    "engagement rate histogram",
                    "Engagement rates of the posts no cycle had used yet (before this one took its examples).",
                )
            ),
            "list_posts": dg.MetadataValue.text(f"finetune-assets posts {dataset_id}"),
        },
        check_results=results,
    )
