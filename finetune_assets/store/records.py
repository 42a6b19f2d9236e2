"""What the store hands out: frozen records of its rows, with the JSON columns read into named, typed fields.

The JSON columns (`details`, `scores`) are written by several steps as they learn things; each record below
reads the keys those steps write and nothing else, tolerating rows written before a key existed. Every
datetime is aware UTC (SQLite returns naive ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes: every value the store hands out is aware UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(value: Any) -> datetime | None:
    """A stored moment (a datetime column or an ISO string in JSON) as aware UTC, None when absent."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str) and value:
        return as_utc(datetime.fromisoformat(value))
    return None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# -- the posts pool and the A/B sums ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolCounts:
    """The funnel of organic posts not yet taken by a dataset: what qualifies and why the rest does not."""

    unused_posts: int
    below_min_impressions: int
    below_engagement_threshold: int
    qualifying: int
    max_qualifying_post_id: int | None


@dataclass(frozen=True)
class ArmTotals:
    """Per-arm sums of per-user engagements (M) and impressions (D), as the delta method needs them."""

    variant: str
    users: int
    sum_m: float
    sum_d: float
    sum_m2: float
    sum_d2: float
    sum_md: float


# -- datasets ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetDetails:
    """What `training_data` records about a collection beyond the counts."""

    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)
    checks_passed: bool | None = None

    @classmethod
    def from_json(cls, raw: Any) -> DatasetDetails:
        data = _dict(raw)
        rejected = _dict(data.get("rejected_by_reason"))
        passed = data.get("checks_passed")
        return cls(
            rejected_by_reason={str(k): int(v) for k, v in rejected.items()},
            checks_passed=passed if isinstance(passed, bool) else None,
        )


@dataclass(frozen=True)
class DatasetRecord:
    """One collection of a cycle's posts (`ft_datasets`); its posts are in the ledger."""

    dataset_id: str
    partition_key: str
    dataset_hash: str
    status: str
    n_train: int
    n_holdout: int
    n_rejected: int
    created_at: datetime
    details: DatasetDetails

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DatasetRecord:
        return cls(
            **{**row, "created_at": as_utc(row["created_at"]), "details": DatasetDetails.from_json(row["details"])}
        )


# -- models and evaluations --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingDetails:
    """What `fine_tuned_model` records about the job: its metrics (steps, losses, seconds, cost — the backend's
    own names), the training-loss curve, where the weights are and which MLflow run logged them."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    losses: tuple[tuple[int, float], ...] = ()
    trained_tokens: int | None = None
    artifact_uri: str | None = None
    mlflow_run_id: str | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, raw: Any) -> TrainingDetails:
        data = _dict(raw)
        metrics = _dict(data.get("metrics"))
        losses = data.get("losses") or []
        return cls(
            metrics={str(k): float(v) for k, v in metrics.items() if _float(v) is not None},
            losses=tuple((int(step), float(loss)) for step, loss in losses),
            trained_tokens=_int(data.get("trained_tokens")),
            artifact_uri=_str(data.get("artifact_uri")) or None,
            mlflow_run_id=_str(data.get("mlflow_run_id")) or None,
            error=_str(data.get("error")),
        )


@dataclass(frozen=True)
class ModelRecord:
    """One fine-tuning job's outcome (`ft_models`); a failed job has a `failed:<job id>` model id."""

    model_id: str
    partition_key: str
    dataset_id: str
    backend: str
    base_model: str
    job_id: str
    status: str
    created_at: datetime
    details: TrainingDetails

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ModelRecord:
        return cls(
            **{**row, "created_at": as_utc(row["created_at"]), "details": TrainingDetails.from_json(row["details"])}
        )


@dataclass(frozen=True)
class ModelScores:
    """One model's scores on the held-out prompts; no loss where the model's API cannot score text."""

    predicted_engagement: float
    heldout_loss: float | None = None

    @classmethod
    def from_json(cls, raw: Any) -> ModelScores:
        data = _dict(raw)
        return cls(
            predicted_engagement=_float(data.get("predicted_engagement")) or 0.0,
            heldout_loss=_float(data.get("heldout_loss")),
        )

    def as_dict(self) -> dict[str, float]:
        """As `evaluation_scores` wrote them (no `heldout_loss` key when there is none)."""
        scores = {"predicted_engagement": self.predicted_engagement}
        if self.heldout_loss is not None:
            scores["heldout_loss"] = self.heldout_loss
        return scores


@dataclass(frozen=True)
class EvaluationScores:
    candidate: ModelScores
    champion: ModelScores
    n_holdout: int | None = None
    scorer_version: str | None = None

    @classmethod
    def from_json(cls, raw: Any) -> EvaluationScores:
        data = _dict(raw)
        return cls(
            candidate=ModelScores.from_json(data.get("candidate")),
            champion=ModelScores.from_json(data.get("champion")),
            n_holdout=_int(data.get("n_holdout")),
            scorer_version=_str(data.get("scorer_version")),
        )


@dataclass(frozen=True)
class EvaluationRecord:
    """One candidate-vs-champion evaluation (`ft_evaluations`)."""

    evaluation_id: str
    partition_key: str
    candidate_model: str
    champion_model: str
    passed: bool
    created_at: datetime
    scores: EvaluationScores

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EvaluationRecord:
        return cls(
            **{**row, "created_at": as_utc(row["created_at"]), "scores": EvaluationScores.from_json(row["scores"])}
        )


# -- experiments -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerGate:
    """The pre-launch power gate's verdict; the numbers are None when there was no traffic to forecast from."""

    ok: bool
    reason: str
    required_users: int | None = None
    forecast_users: int | None = None
    power_at_forecast: float | None = None
    mde_at_forecast: float | None = None
    baseline_rate: float | None = None
    design_effect: float | None = None

    @classmethod
    def from_json(cls, raw: Any) -> PowerGate | None:
        data = _dict(raw)
        if not data:
            return None
        return cls(
            ok=bool(data.get("ok", False)),
            reason=str(data.get("reason", "not checked")),
            required_users=_int(data.get("required_users")),
            forecast_users=_int(data.get("forecast_users")),
            power_at_forecast=_float(data.get("power_at_forecast")),
            mde_at_forecast=_float(data.get("mde_at_forecast")),
            baseline_rate=_float(data.get("baseline_rate")),
            design_effect=_float(data.get("design_effect")),
        )


@dataclass(frozen=True)
class MonitorLook:
    """The last look of the harm and SRM monitor."""

    action: str
    reason: str
    lift: float | None = None
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, raw: Any) -> MonitorLook | None:
        data = _dict(raw)
        if not data:
            return None
        return cls(
            action=str(data.get("action", "")),
            reason=str(data.get("reason", "")),
            lift=_float(data.get("lift")),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
        )


@dataclass(frozen=True)
class EarlyStop:
    """The monitor stopped the experiment before its window ended (harm or SRM): traffic after `at` is not
    part of the test."""

    action: str
    reason: str
    at: datetime
    hours_elapsed: float | None = None

    @classmethod
    def from_json(cls, raw: Any) -> EarlyStop | None:
        data = _dict(raw)
        at = _time(data.get("at"))
        if at is None:
            return None
        return cls(
            action=str(data.get("action", "")),
            reason=str(data.get("reason", "")),
            at=at,
            hours_elapsed=_float(data.get("hours_elapsed")),
        )


_DECISION_KEYS = frozenset({"action", "code", "lift", "p_value", "users", "decided_until"})


@dataclass(frozen=True)
class DecisionSummary:
    """The once-only promotion test's numbers, as the decision recorded them (which checks passed; the
    guardrails' effects are in the `ab_test_outcome` materialization)."""

    action: str
    code: str
    reason: str
    users: Mapping[str, int] = field(default_factory=dict)
    lift: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    control_rate: float | None = None
    treatment_rate: float | None = None
    srm_p_value: float | None = None
    srm_sequential_p: float | None = None
    checks: Mapping[str, bool] = field(default_factory=dict)
    decided_until: datetime | None = None
    """The end of the traffic the test read (the window's end, or the early stop)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecisionSummary | None:
        if not _DECISION_KEYS & data.keys():
            return None
        return cls(
            action=str(data.get("action", "")),
            code=str(data.get("code", "")),
            reason=str(data.get("reason", "")),
            users={str(k): int(v) for k, v in _dict(data.get("users")).items()},
            lift=_float(data.get("lift")),
            ci_low=_float(data.get("ci_low")),
            ci_high=_float(data.get("ci_high")),
            p_value=_float(data.get("p_value")),
            control_rate=_float(data.get("control_rate")),
            treatment_rate=_float(data.get("treatment_rate")),
            srm_p_value=_float(data.get("srm_p_value")),
            srm_sequential_p=_float(data.get("srm_sequential_p")),
            checks={str(k): bool(v) for k, v in _dict(data.get("checks")).items()},
            decided_until=_time(data.get("decided_until")),
        )

    def rate(self, arm: str) -> float | None:
        return self.control_rate if arm == "control" else self.treatment_rate


@dataclass(frozen=True)
class ExperimentDetails:
    """What the experiment's life adds to its row: the launch plan, the monitor's state between looks (the
    only state carried from one look to the next), where its traffic came from, and the decision's numbers."""

    n_star: int | None = None
    forecast_users: int | None = None
    power_gate: PowerGate | None = None
    monitor: MonitorLook | None = None
    monitor_looks: int = 0
    last_look_at: datetime | None = None
    srm_running_min_p: float = 1.0
    harm_alarm: bool = False
    early_stop: EarlyStop | None = None
    traffic_source: str | None = None
    decision: DecisionSummary | None = None

    @classmethod
    def from_json(cls, raw: Any) -> ExperimentDetails:
        data = _dict(raw)
        srm_min_p = _float(data.get("srm_running_min_p"))
        return cls(
            n_star=_int(data.get("n_star")),
            forecast_users=_int(data.get("forecast_users")),
            power_gate=PowerGate.from_json(data.get("power_gate")),
            monitor=MonitorLook.from_json(data.get("monitor")),
            monitor_looks=_int(data.get("monitor_looks")) or 0,
            last_look_at=_time(data.get("last_look_at")),
            srm_running_min_p=1.0 if srm_min_p is None else srm_min_p,
            harm_alarm=bool(data.get("harm_alarm")),
            early_stop=EarlyStop.from_json(data.get("early_stop")),
            traffic_source=_str(data.get("traffic_source")),
            decision=DecisionSummary.from_json(data),
        )


@dataclass(frozen=True)
class ExperimentRecord:
    """One A/B test (`ft_experiments`): its phase (salt, split, coverage), window, status and decision."""

    experiment_id: str
    partition_key: str
    control_model: str
    treatment_model: str
    salt: str
    split: float
    coverage: float
    started_at: datetime
    ends_at: datetime
    status: str
    decision: str | None
    reason: str | None
    decided_at: datetime | None
    details: ExperimentDetails

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ExperimentRecord:
        times = {k: _time(row[k]) for k in ("started_at", "ends_at", "decided_at")}
        return cls(**{**row, **times, "details": ExperimentDetails.from_json(row["details"])})

    def phase(self) -> dict[str, Any]:
        """The phase config: what assignment depends on, and what a ramp may (coverage) or may not change."""
        return {
            "salt": self.salt,
            "split": self.split,
            "coverage": self.coverage,
            "control_model": self.control_model,
            "treatment_model": self.treatment_model,
        }

    def model_of(self, arm: str) -> str:
        return self.treatment_model if arm == "treatment" else self.control_model


# -- promotions --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionRecord:
    """The routing decision taken for an experiment: the candidate promoted, or the previous model kept."""

    promotion_id: int
    experiment_id: str
    model_id: str
    previous_model_id: str
    registry_version: str | None
    promoted: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PromotionRecord:
        return cls(**{**row, "created_at": as_utc(row["created_at"])})
