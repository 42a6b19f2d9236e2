"""`ab_test` starts the experiment; `ab_test_outcome` decides it once its window has closed or the monitor
stopped it.

Nothing here waits: `ab_test` checks the power, records the window and returns; `ab_test_sensor` runs the
hourly harm/SRM monitor and launches the outcome when the clock passes the window's end or the monitor stops
the test (a pod never sleeps for 168 hours). The logic lives in `experiments/lifecycle.py`.
"""

from datetime import datetime

import dagster as dg

from finetune_assets.assets.database import lost_connection_is_retried
from finetune_assets.checks import AB_TEST_OUTCOME_CHECKS, enough_data, no_sample_ratio_mismatch
from finetune_assets.deployment.k8s import k8s_resources
from finetune_assets.experiments.policy.decision import FinalDecision
from finetune_assets.experiments.runtime.lifecycle import (
    LaunchRefused,
    conclude_experiment,
    early_stop,
    experiment_sums,
    launch_experiment,
    publish_routing,
)
from finetune_assets.experiments.runtime.timeline import daily_cutoffs, lift_timeline
from finetune_assets.experiments.stats.statistics import ArmSums
from finetune_assets.partitions import cycle_asset
from finetune_assets.reporting.metadata import image_markdown, lift_over_time_plot, table
from finetune_assets.reporting.metrics import report_ab_outcome
from finetune_assets.resources.cache import RedisResource
from finetune_assets.resources.clock import ClockResource
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.store.experiments import ExperimentAlreadyRunning
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.records import ExperimentRecord


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
    redis: RedisResource,
) -> dg.MaterializeResult:
    """Start routing a share of users to the candidate for `a_b_test_duration_hours`, if the traffic can
    power the test (with `experiment.underpowered: warn`, start anyway and record that it cannot)."""
    settings = pipeline.get()
    db = store.get()
    evaluation = db.latest_evaluation(context.partition_key)
    if evaluation is None or not evaluation.passed:
        raise dg.Failure(
            f"cycle {context.partition_key}: the candidate has no passing evaluation; no experiment starts"
        )
    candidate = evaluation.candidate_model
    existing = db.latest_experiment(context.partition_key)
    if existing is not None and existing.treatment_model == candidate:
        experiment = existing
        context.log.info(f"experiment {experiment.experiment_id} already started for {candidate}")
    else:
        try:
            experiment = launch_experiment(
                db,
                settings,
                partition_key=context.partition_key,
                candidate=candidate,
                now=clock.now(),
                warn=context.log.warning,
            )
        except (LaunchRefused, ExperimentAlreadyRunning) as exc:
            raise dg.Failure(str(exc)) from None
    publish_routing(redis, db, settings.base_model, context.log.warning)
    details = experiment.details
    gate = details.power_gate
    return dg.MaterializeResult(
        metadata={
            "experiment_id": experiment.experiment_id,
            "control_model": experiment.control_model,
            "treatment_model": experiment.treatment_model,
            "salt": experiment.salt,
            "split": experiment.split,
            "coverage": experiment.coverage,
            "started_at": dg.MetadataValue.timestamp(experiment.started_at),
            "ends_at": dg.MetadataValue.timestamp(experiment.ends_at),
            "duration_hours": settings.a_b_test_duration_hours,
            "powered": gate is not None and gate.ok,
            "power_gate": gate.reason if gate is not None else "not checked",
            "power_at_forecast": dg.MetadataValue.float((gate and gate.power_at_forecast) or 0.0),
            "required_users": (gate and gate.required_users) or 0,
            "forecast_users": details.forecast_users or 0,
            "n_star": details.n_star or 0,
        }
    )


def lift_over_time_markdown(db: PlatformStore, experiment: ExperimentRecord, alpha: float) -> str:
    """The cumulative lift after each day of the window (per-user sums in SQL, one query per day), as a plot."""

    def sums_until(cutoff: datetime) -> tuple[ArmSums, ArmSums]:
        return experiment_sums(db, experiment.experiment_id, until=cutoff)

    started, ends = experiment.started_at, experiment.ends_at
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
    redis: RedisResource,
) -> dg.MaterializeResult:
    """The promotion test, read once: per-arm engagement, the lift with its interval, SRM, guardrails, the
    monitor's alarms, and the decision with its reason."""
    settings = pipeline.get()
    db = store.get()
    experiment = db.latest_experiment(context.partition_key)
    if experiment is None:
        raise dg.Failure(f"cycle {context.partition_key} has no experiment; materialize ab_test first")
    now = clock.now()
    stop = early_stop(experiment)
    if experiment.status == "running" and now < experiment.ends_at and stop is None:
        left = (experiment.ends_at - now).total_seconds() / 3600
        raise dg.Failure(
            f"experiment {experiment.experiment_id} runs {left:.1f} more hours (until "
            f"{experiment.ends_at:%Y-%m-%d %H:%M} UTC); ab_test_sensor launches the outcome when it ends"
        )
    with lost_connection_is_retried(f"deciding experiment {experiment.experiment_id}"):
        outcome = conclude_experiment(db, experiment, settings, now)
    decision, control, treatment = outcome.decision, outcome.control, outcome.treatment
    users = {"control": control.n, "treatment": treatment.n}
    checks = [
        no_sample_ratio_mismatch(
            decision.srm.p_value, settings.experiment.srm_threshold, users, sequential_p=decision.srm_sequential_p
        ),
        enough_data(users, settings.experiment.min_users_per_arm),
    ]
    publish_routing(redis, db, settings.base_model, context.log.warning)
    lift = decision.lift
    report_ab_outcome(
        users=users,
        rates={arm: sums.rate for arm, sums in (("control", control), ("treatment", treatment)) if sums.n},
        lift=(lift.lift, lift.ci_low, lift.ci_high) if lift else None,
        srm_p_value=decision.srm.p_value,
        code=decision.code,
        warn=context.log.warning,
    )
    rows = [
        (
            arm,
            f"`{experiment.model_of(arm)}`",
            s.n,
            f"{s.sum_d:,.0f}",
            f"{s.sum_m:,.0f}",
            f"{s.rate:.4%}" if s.n else "–",
        )
        for arm, s in (("control", control), ("treatment", treatment))
    ]
    details = experiment.details
    metadata: dict[str, object] = {
        "experiment_id": experiment.experiment_id,
        "decision": decision.action,
        "decision_code": decision.code,
        "reason": decision.reason,
        "arms": dg.MetadataValue.md(
            table(["arm", "model", "users", "impressions", "engagements", "engagement rate"], rows)
        ),
        "users_control": users["control"],
        "users_treatment": users["treatment"],
        "srm_p_value": decision.srm.p_value,
        "srm_sequential_p": decision.srm_sequential_p,
        "harm_alarm": details.harm_alarm,
        "stopped_early": stop.reason if stop else "no",
        "monitor_looks": details.monitor_looks,
        "powered": details.power_gate is not None and details.power_gate.ok,
        "guardrails": dg.MetadataValue.md(guardrail_table(decision)),
        "checks": dg.MetadataValue.md(
            table(
                ["check", "passed", "detail"],
                [(c.name, "yes" if c.passed else "no", c.message) for c in decision.checks],
            )
        ),
        "window_start": dg.MetadataValue.timestamp(experiment.started_at),
        "window_end": dg.MetadataValue.timestamp(experiment.ends_at),
        "traffic_source": details.traffic_source or "live traffic",
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
    context.log.info(f"experiment {experiment.experiment_id}: {decision.action} — {decision.reason}")
    return dg.MaterializeResult(metadata=metadata, check_results=checks)  # type: ignore[arg-type]


def guardrail_table(decision: FinalDecision) -> str:
    rows = [
        (g.name, f"{g.effect:+.2%}" if g.effect is not None else "–", f"−{g.margin:.0%}", "yes" if g.passed else "no")
        for g in decision.guardrails
    ]
    return table(["guardrail", "relative change", "margin", "non-inferior"], rows)
