"""An experiment's life against the platform store: the power gate at launch, the hourly monitor, the final
decision, and the routing snapshot the content app reads.

Plain Python between the SQL store (the truth, and the only state carried between looks) and the pure
engine (:mod:`.monitor`, :mod:`.decision`); the `ab_test` assets and `ab_test_sensor` are thin calls into it.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.experiments.policy.decision import FinalDecision, final_decision
from finetune_assets.experiments.policy.guardrails import default_guardrails
from finetune_assets.experiments.policy.launch import PowerGateResult, power_gate, validate_phase_change
from finetune_assets.experiments.policy.monitor import MonitorResult, monitor
from finetune_assets.experiments.stats.statistics import ArmSums
from finetune_assets.settings import Settings
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.records import ArmTotals, EarlyStop, ExperimentRecord

if TYPE_CHECKING:
    from finetune_assets.resources.cache import RedisResource

ARMS = ("control", "treatment")
Warn = Callable[[str], None]


def to_arm_sums(totals: ArmTotals | None) -> ArmSums:
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


def experiment_sums(db: PlatformStore, experiment_id: str, until: datetime | None) -> tuple[ArmSums, ArmSums]:
    totals = db.arm_totals(experiment_id, until=until)
    return to_arm_sums(totals.get("control")), to_arm_sums(totals.get("treatment"))


# --- launch ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """What the power gate said and the N* the monitor will use at every look (fixed before the start)."""

    gate: PowerGateResult | None
    forecast_users: int
    n_star: int
    reason: str

    @property
    def underpowered(self) -> bool:
        return self.gate is None or not self.gate.ok

    def to_details(self) -> dict[str, Any]:
        return {
            "n_star": self.n_star,
            "forecast_users": self.forecast_users,
            "power_gate": {"ok": not self.underpowered, "reason": self.reason}
            | ({} if self.gate is None else _json_safe(dataclasses.asdict(self.gate))),
        }


def plan_launch(db: PlatformStore, settings: Settings, start: datetime) -> LaunchPlan:
    """The pre-launch power gate from the last `a_b_test_duration_hours` of traffic before `start`.

    The users active in that window, times the coverage, are the forecast of enrolled users by the end, and
    that forecast is the monitor's N*: fixed before the start, so looking often does not move the boundary.
    """
    exp = settings.experiment
    duration = timedelta(hours=settings.a_b_test_duration_hours)
    history = db.traffic_history(start - duration, start)
    forecast = round(history.users * exp.coverage) if history is not None else 0
    n_star = max(forecast, 2 * exp.min_users_per_arm)
    if history is None or history.users < 2 or not 0 < history.sum_m < history.sum_d:
        reason = (
            f"no usable traffic in the {settings.a_b_test_duration_hours} h before the start to forecast from; "
            f"the test's power is unknown (N* set to {n_star:,} users)"
        )
        return LaunchPlan(None, forecast, n_star, reason)
    gate = power_gate(
        relative_mde=exp.min_detectable_effect,
        forecast_users=forecast,
        historical=to_arm_sums(history),
        alpha_win=exp.alpha / 2,
        power=exp.power,
        split=exp.split,
    )
    return LaunchPlan(gate, forecast, n_star, gate.reason)


class LaunchRefused(FinetuneAssetsError, RuntimeError):
    """The power gate refused to start an under-powered test (`experiment.underpowered: refuse`)."""


def launch_experiment(
    db: PlatformStore, settings: Settings, *, partition_key: str, candidate: str, now: datetime, warn: Warn
) -> ExperimentRecord:
    """Run the power gate, then start the experiment (a fresh salt, production as control) with N* recorded.

    Raises LaunchRefused, or the store's ExperimentAlreadyRunning: only one experiment runs at a time.
    """
    plan = plan_launch(db, settings, now)
    if plan.underpowered:
        if settings.experiment.underpowered == "refuse":
            raise LaunchRefused(
                f"cycle {partition_key}: the experiment does not start — {plan.reason} "
                "(experiment.underpowered is 'refuse')"
            )
        warn(f"cycle {partition_key}: {plan.reason}")
    experiment = db.start_experiment(
        experiment_id=f"exp-{partition_key}-{secrets.token_hex(3)}",
        partition_key=partition_key,
        control_model=db.production_model(default=settings.base_model),
        treatment_model=candidate,
        salt=secrets.token_hex(8),
        split=settings.experiment.split,
        coverage=settings.experiment.coverage,
        started_at=now,
        ends_at=now + timedelta(hours=settings.a_b_test_duration_hours),
    )
    db.annotate_experiment(experiment.experiment_id, **plan.to_details())
    started = db.get_experiment(experiment.experiment_id)
    assert started is not None
    return started


def ramp_experiment(db: PlatformStore, experiment_id: str, coverage: float) -> ExperimentRecord:
    """Enroll more users in the running experiment. Coverage only goes up within a phase: nobody enrolled is
    reassigned or dropped (the arm hash is independent of the enrollment hash). A split change would move users
    between arms, so it needs a new experiment, never a ramp. Raises ValueError naming what is wrong."""
    experiment = db.get_experiment(experiment_id)
    if experiment is None:
        raise ValueError(f"experiment {experiment_id!r}: no such experiment")
    if experiment.status != "running":
        raise ValueError(f"experiment {experiment_id!r} is {experiment.status}, not running: nothing to ramp")
    validate_phase_change(experiment.phase(), {**experiment.phase(), "coverage": coverage})
    db.set_coverage(experiment_id, coverage)
    ramped = db.get_experiment(experiment_id)
    assert ramped is not None
    return ramped


# --- the hourly monitor ----------------------------------------------------------------------------------


def next_look(experiment: ExperimentRecord, settings: Settings) -> datetime:
    """When the monitor looks next: `monitor_interval_minutes` after the last look (the start if none)."""
    since = experiment.details.last_look_at or experiment.started_at
    return since + timedelta(minutes=settings.experiment.monitor_interval_minutes)


def early_stop(experiment: ExperimentRecord) -> EarlyStop | None:
    """The monitor's stop (harm or SRM) if it stopped this experiment before its window ended."""
    return experiment.details.early_stop


def monitor_experiment(
    db: PlatformStore, experiment: ExperimentRecord, settings: Settings, now: datetime
) -> MonitorResult:
    """One look of the harm and SRM monitor over the traffic so far; persists what the next look needs."""
    exp = settings.experiment
    details = experiment.details
    control, treatment = experiment_sums(db, experiment.experiment_id, until=now)
    hours = max(0.0, (now - experiment.started_at).total_seconds() / 3600)
    result = monitor(
        control,
        treatment,
        hours_elapsed=hours,
        n_star=float(details.n_star or 2 * exp.min_users_per_arm),
        alpha_harm=exp.harm_alpha,
        guardrails=default_guardrails(control, treatment, margin=exp.guardrail_margin),
        split=experiment.split,
        srm_previous_p=details.srm_running_min_p,
    )
    update: dict[str, Any] = {
        "monitor": result.to_details(),
        "monitor_looks": details.monitor_looks + 1,
        "last_look_at": now.isoformat(),
        "srm_running_min_p": result.srm.running_min_p,
        "harm_alarm": details.harm_alarm or result.action == "stop_harm",
    }
    if result.stop and early_stop(experiment) is None:
        update["early_stop"] = {
            "action": result.action,
            "reason": result.reason,
            "at": now.isoformat(),
            "hours_elapsed": hours,
        }
    db.annotate_experiment(experiment.experiment_id, **_json_safe(update))
    return result


@dataclasses.dataclass(frozen=True)
class Watch:
    """What to do about a running experiment now: wait (with why), or decide it (window over or stopped)."""

    decide: bool
    reason: str
    look: MonitorResult | None = None


def watch_experiment(db: PlatformStore, experiment: ExperimentRecord, settings: Settings, now: datetime) -> Watch:
    """One sensor tick's worth: decide at the window's end or after an early stop; otherwise look when due."""
    experiment_id = experiment.experiment_id
    if now >= experiment.ends_at:
        return Watch(True, f"experiment {experiment_id}'s window ended at {experiment.ends_at:%Y-%m-%d %H:%M} UTC")
    stop = early_stop(experiment)
    if stop is not None:
        return Watch(True, f"experiment {experiment_id} was stopped early ({stop.action}): {stop.reason}")
    hours = (experiment.ends_at - now).total_seconds() / 3600
    due = next_look(experiment, settings)
    if now < due:
        monitor_look = experiment.details.monitor
        last = monitor_look.reason if monitor_look is not None else "no look yet"
        return Watch(
            False,
            f"experiment {experiment_id} has {hours:.1f} h left (ends {experiment.ends_at:%Y-%m-%d %H:%M} UTC); "
            f"next monitor look at {due:%H:%M} UTC; last look: {last}",
        )
    look = monitor_experiment(db, experiment, settings, now)
    if look.stop:
        return Watch(True, f"experiment {experiment_id} stopped early ({look.action}): {look.reason}", look)
    return Watch(False, f"experiment {experiment_id} has {hours:.1f} h left; monitor: {look.reason}", look)


# --- the decision ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    decision: FinalDecision
    control: ArmSums
    treatment: ArmSums
    until: datetime


def decide_experiment(db: PlatformStore, experiment: ExperimentRecord, settings: Settings, now: datetime) -> Outcome:
    """The once-only promotion test over the window (or up to the early stop), with the monitor's state."""
    exp = settings.experiment
    details = experiment.details
    until = min(now, experiment.ends_at)
    stop = early_stop(experiment)
    if stop is not None:  # traffic after the stop is not part of the test (the candidate was rolled back)
        until = min(until, stop.at)
    control, treatment = experiment_sums(db, experiment.experiment_id, until=until)
    decision = final_decision(
        control,
        treatment,
        split=experiment.split,
        guardrails=default_guardrails(control, treatment, margin=exp.guardrail_margin),
        harm_alarm=details.harm_alarm,
        srm_sequential_p=details.srm_running_min_p,
        alpha_win=exp.alpha / 2,
        srm_threshold=exp.srm_threshold,
        min_users_per_arm=exp.min_users_per_arm,
    )
    return Outcome(decision, control, treatment, until)


def conclude_experiment(db: PlatformStore, experiment: ExperimentRecord, settings: Settings, now: datetime) -> Outcome:
    """Decide and record the decision (status decided/invalid, promote/keep, the reason and every number), once.

    A retried decision run finds the experiment already decided: it reads the same window again, up to the
    recorded `decided_until`, and records nothing, so the first decision stands and what was promoted on it
    stays true. The same holds when two runs race: the store records only the first.
    """
    already = _recorded_until(experiment)
    if already is not None:
        return decide_experiment(db, experiment, settings, already)
    outcome = decide_experiment(db, experiment, settings, now)
    decision = outcome.decision
    recorded = db.decide_experiment(
        experiment.experiment_id,
        status=decision.status,
        decision=decision.store_decision,
        reason=decision.reason,
        details={**_json_safe(decision.to_details()), "decided_until": outcome.until.isoformat()},
    )
    if not recorded:  # another run decided it between our read and our write
        current = db.get_experiment(experiment.experiment_id)
        until = _recorded_until(current) if current is not None else None
        if current is not None and until is not None:
            return decide_experiment(db, current, settings, until)
    return outcome


def _recorded_until(experiment: ExperimentRecord) -> datetime | None:
    """Where a decided experiment's recorded decision read up to; None while it runs."""
    decision = experiment.details.decision
    if experiment.status == "running" or decision is None:
        return None
    return decision.decided_until


# --- routing ---------------------------------------------------------------------------------------------


def publish_routing(redis: RedisResource, db: PlatformStore, default_model: str, warn: Warn) -> bool:
    """Tell the content app's routers what runs now (read back from the store, the truth). Redis unset or
    down is a warning, never a failure: routers fall back to SQL within their refresh interval."""
    client = redis.client(warn)
    if client is None:
        return False
    from redis import RedisError

    from finetune_assets.experiments.runtime.router import publish

    try:
        return publish(
            client,
            db.running_experiment(),
            production_model=db.production_model(default=default_model),
            key_prefix=redis.key("routing"),
        )
    except RedisError as exc:
        warn(f"could not publish the routing snapshot to Redis ({type(exc).__name__}); routers read SQL instead")
        return False


def _json_safe(value: Any) -> Any:
    """Floats that JSON cannot hold (inf, nan) become None; tuples become lists."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value
