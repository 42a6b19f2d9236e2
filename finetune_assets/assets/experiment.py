"""`ab_test` starts the experiment; `ab_test_outcome` decides it once its window has closed.

Nothing here waits: `ab_test` records the window and returns, and `ab_test_sensor` launches the outcome
when the clock passes the window's end (a pod never sleeps for 168 hours).
"""

import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import dagster as dg

from finetune_assets.checks import AB_TEST_OUTCOME_CHECKS, enough_data, no_sample_ratio_mismatch
from finetune_assets.experiments.statistics import ArmSums, decide, relative_lift, srm_p_value
from finetune_assets.experiments.timeline import daily_cutoffs, lift_timeline
from finetune_assets.k8s import k8s_resources
from finetune_assets.observability import report_ab_outcome
from finetune_assets.partitions import cycle_asset
from finetune_assets.reporting import image_markdown, lift_over_time_plot, table
from finetune_assets.resources.clock import ClockResource
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.store import ArmTotals, ExperimentAlreadyRunning, PlatformStore, StoreResource

ARMS = ("control", "treatment")


@cycle_asset(
    deps=["evaluation_scores"],
    kinds={"sql"},
    op_tags=k8s_resources(),
)
def ab_test(
    context: dg.AssetExecutionContext,
    pipeline: PipelineConfigResource,
    store: StoreResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Start routing a share of users to the candidate for `a_b_test_duration_hours`."""
    settings = pipeline.get()
    db = store.get()
    evaluation = db.latest_evaluation(context.partition_key)
    if evaluation is None or not evaluation["passed"]:
        raise dg.Failure(
            f"cycle {context.partition_key}: the candidate has no passing evaluation; no experiment starts"
        )
    candidate = evaluation["candidate_model"]
    existing = db.latest_experiment(context.partition_key)
    if existing is not None and existing["treatment_model"] == candidate:
        experiment = existing
        context.log.info(f"experiment {experiment['experiment_id']} already started for {candidate}")
    else:
        started = clock.now()
        try:
            experiment = db.start_experiment(
                experiment_id=f"exp-{context.partition_key}-{secrets.token_hex(3)}",
                partition_key=context.partition_key,
                control_model=db.production_model(default=settings.base_model),
                treatment_model=candidate,
                salt=secrets.token_hex(8),
                split=settings.experiment.split,
                coverage=settings.experiment.coverage,
                started_at=started,
                ends_at=started + timedelta(hours=settings.a_b_test_duration_hours),
            )
        except ExperimentAlreadyRunning as exc:
            raise dg.Failure(str(exc)) from None
    return dg.MaterializeResult(
        metadata={
            "experiment_id": experiment["experiment_id"],
            "control_model": experiment["control_model"],
            "treatment_model": experiment["treatment_model"],
            "salt": experiment["salt"],
            "split": experiment["split"],
            "coverage": experiment["coverage"],
            "started_at": dg.MetadataValue.timestamp(experiment["started_at"]),
            "ends_at": dg.MetadataValue.timestamp(experiment["ends_at"]),
            "duration_hours": settings.a_b_test_duration_hours,
        }
    )


def arm_sums(totals: ArmTotals | None) -> ArmSums:
    if totals is None:
        return ArmSums(n=0, sum_m=0.0, sum_d=0.0, sum_m2=0.0, sum_d2=0.0, sum_md=0.0)
    return ArmSums(
        n=totals.users,
        sum_m=totals.sum_m,
        sum_d=totals.sum_d,
        sum_m2=totals.sum_m2,
        sum_d2=totals.sum_d2,
        sum_md=totals.sum_md,
    )


def lift_over_time_markdown(db: PlatformStore, experiment: Mapping[str, Any], alpha: float) -> str:
    """The cumulative lift after each day of the window (per-user sums in SQL, one query per day), as a plot."""

    def sums_until(cutoff: datetime) -> tuple[ArmSums, ArmSums]:
        totals = db.arm_totals(experiment["experiment_id"], until=cutoff)
        return arm_sums(totals.get("control")), arm_sums(totals.get("treatment"))

    started, ends = experiment["started_at"], experiment["ends_at"]
    points = lift_timeline(started, daily_cutoffs(started, ends), sums_until, alpha=alpha)
    duration = (ends - started).total_seconds() / 3600
    png = lift_over_time_plot(points, confidence=1 - alpha, duration_hours=duration)
    return image_markdown(
        png,
        "A/B lift over time",
        f"Cumulative relative lift of the treatment's engagement rate over control after each day, with its "
        f"{1 - alpha:.0%} delta-method interval. The decision reads the test once, at the end of the window.",
    )


@cycle_asset(
    deps=[ab_test],
    check_specs=AB_TEST_OUTCOME_CHECKS,
    kinds={"sql"},
    op_tags=k8s_resources(),
)
def ab_test_outcome(
    context: dg.AssetExecutionContext,
    pipeline: PipelineConfigResource,
    store: StoreResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Per-arm engagement, the relative lift with its delta-method interval, SRM, and the decision."""
    settings = pipeline.get()
    db = store.get()
    experiment = db.latest_experiment(context.partition_key)
    if experiment is None:
        raise dg.Failure(f"cycle {context.partition_key} has no experiment; materialize ab_test first")
    now = clock.now()
    if now < experiment["ends_at"]:
        left = (experiment["ends_at"] - now).total_seconds() / 3600
        raise dg.Failure(
            f"experiment {experiment['experiment_id']} runs {left:.1f} more hours (until "
            f"{experiment['ends_at']:%Y-%m-%d %H:%M} UTC); ab_test_sensor launches the outcome when it ends"
        )
    totals = db.arm_totals(experiment["experiment_id"])
    control, treatment = arm_sums(totals.get("control")), arm_sums(totals.get("treatment"))
    users = {arm: arm_sums(totals.get(arm)).n for arm in ARMS}
    split = float(experiment["split"])
    srm_p = srm_p_value([users["control"], users["treatment"]], [1 - split, split])
    decision = decide(
        control,
        treatment,
        alpha=settings.experiment.alpha,
        min_users_per_arm=settings.experiment.min_users_per_arm,
        srm_threshold=settings.experiment.srm_threshold,
        split=split,
    )
    lift = relative_lift(control, treatment, alpha=settings.experiment.alpha) if min(users.values()) >= 2 else None
    checks = [
        no_sample_ratio_mismatch(srm_p, settings.experiment.srm_threshold, users),
        enough_data(users, settings.experiment.min_users_per_arm),
    ]
    invalid = not all(c.passed for c in checks)
    details = {
        "users": users,
        "srm_p_value": srm_p,
        "lift": lift.lift if lift else None,
        "ci_low": lift.ci_low if lift else None,
        "ci_high": lift.ci_high if lift else None,
        "p_value": lift.p_value if lift else None,
        "control_rate": control.rate if control.n else None,
        "treatment_rate": treatment.rate if treatment.n else None,
    }
    db.decide_experiment(
        experiment["experiment_id"],
        status="invalid" if invalid else "decided",
        decision=decision.action,
        reason=decision.reason,
        details=details,
    )
    report_ab_outcome(
        users=users,
        rates={arm: sums.rate for arm, sums in (("control", control), ("treatment", treatment)) if sums.n},
        lift=(lift.lift, lift.ci_low, lift.ci_high) if lift else None,
        srm_p_value=srm_p,
        code=decision.code,
        warn=context.log.warning,
    )
    rows = [
        (
            arm,
            f"`{experiment['control_model' if arm == 'control' else 'treatment_model']}`",
            s.n,
            f"{s.sum_d:,.0f}",
            f"{s.sum_m:,.0f}",
            f"{s.rate:.4%}" if s.n else "–",
        )
        for arm, s in (("control", control), ("treatment", treatment))
    ]
    metadata: dict[str, object] = {
        "experiment_id": experiment["experiment_id"],
        "decision": decision.action,
        "reason": decision.reason,
        "arms": dg.MetadataValue.md(
            table(["arm", "model", "users", "impressions", "engagements", "engagement rate"], rows)
        ),
        "users_control": users["control"],
        "users_treatment": users["treatment"],
        "srm_p_value": srm_p,
        "window_start": dg.MetadataValue.timestamp(experiment["started_at"]),
        "window_end": dg.MetadataValue.timestamp(experiment["ends_at"]),
        "traffic_source": str(experiment["details"].get("traffic_source", "live traffic")),
        "lift_plot": dg.MetadataValue.md(lift_over_time_markdown(db, experiment, settings.experiment.alpha)),
    }
    if lift is not None:
        metadata.update(
            {
                "relative_lift": lift.lift,
                "lift_ci_low": lift.ci_low,
                "lift_ci_high": lift.ci_high,
                "p_value": lift.p_value,
                "confidence_level": 1 - settings.experiment.alpha,
            }
        )
    context.log.info(f"experiment {experiment['experiment_id']}: {decision.action} — {decision.reason}")
    return dg.MaterializeResult(metadata=metadata, check_results=checks)  # type: ignore[arg-type]
