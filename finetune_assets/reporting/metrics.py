"""Prometheus metrics of the fine-tuning loop, pushed to a Pushgateway when `PROMETHEUS_PUSHGATEWAY_URL` is set.

Runs are short-lived Kubernetes pods that nothing scrapes, so each step pushes what it just measured and
Prometheus scrapes the Pushgateway (`honor_labels: true`). A push is a POST of only the metrics this process
has set: it replaces those metrics in the group and leaves the ones other steps pushed alone. Gauges carry the
latest state (the last cycle's dataset, job, evaluation and experiment); the only counters are the sensors',
which live as long as the code server that evaluates them. Monitoring never fails a run: without the variable
a push is a no-op, and an unreachable gateway is a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import pushadd_to_gateway
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

PUSHGATEWAY_ENV = "PROMETHEUS_PUSHGATEWAY_URL"
PUSH_JOB = "finetune_assets"
PUSH_TIMEOUT_S = 5.0
HARM_CODES = frozenset({"worse", "harm_alarm", "stop_harm"})
"""Decision codes meaning the candidate hurt users: the final look's "significantly worse", the decision
after the hourly monitor's harm alarm, and the monitor's early `stop_harm`."""

Warn = Callable[[str], None]
_log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
"""Our own registry: nothing of the process (or of other libraries) leaks into the pushed group."""

QUALIFYING_EXAMPLES = Gauge(
    "finetune_qualifying_examples",
    "Qualifying posts that no training cycle has used yet (training_data_sensor, every tick).",
    registry=REGISTRY,
)
SENSOR_RUN_REQUESTS = Counter(
    "finetune_sensor_run_requests", "Runs requested by a sensor (sensor firings).", ["sensor"], registry=REGISTRY
)
RUN_FAILURES = Counter(  # not `job`: that is the Pushgateway's grouping label
    "finetune_run_failures",
    "Failed runs of the loop's jobs (finetune_run_failure_sensor).",
    ["dagster_job"],
    registry=REGISTRY,
)
DATASET_EXAMPLES = Gauge(
    "finetune_dataset_examples",
    "Examples of the latest training_data by role: train, holdout, rejected.",
    ["role"],
    registry=REGISTRY,
)
FINE_TUNE_JOB_STATUS = Gauge(
    "finetune_fine_tune_job_status",
    "1 for the status of the latest fine-tuning job (succeeded, failed, cancelled).",
    ["status"],
    registry=REGISTRY,
)
TRAINED_TOKENS = Gauge(
    "finetune_fine_tune_trained_tokens", "Tokens trained by the latest fine-tuning job.", registry=REGISTRY
)
COST_USD = Gauge(
    "finetune_fine_tune_cost_usd",
    "Billed cost of the latest fine-tuning job in US dollars, as the backend reports it (0 for the local backend).",
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "finetune_fine_tune_last_success_timestamp_seconds",
    "Unix time at which a fine-tuning job last succeeded.",
    registry=REGISTRY,
)
HELDOUT_LOSS = Gauge(
    "finetune_evaluation_heldout_loss",
    "Held-out loss of the latest evaluation, by model: candidate, champion.",
    ["model"],
    registry=REGISTRY,
)
PREDICTED_ENGAGEMENT = Gauge(
    "finetune_evaluation_predicted_engagement",
    "Mean predicted engagement rate of each model's generations in the latest evaluation.",
    ["model"],
    registry=REGISTRY,
)
EVALUATION_PASSED = Gauge(
    "finetune_evaluation_passed", "1 if the latest candidate passed candidate_not_worse, else 0.", registry=REGISTRY
)
AB_USERS = Gauge(
    "finetune_ab_test_users", "Users per arm of the latest decided experiment.", ["arm"], registry=REGISTRY
)
AB_ENGAGEMENT_RATE = Gauge(
    "finetune_ab_test_engagement_rate",
    "Engagement rate (engagements / impressions) per arm of the latest decided experiment.",
    ["arm"],
    registry=REGISTRY,
)
AB_RELATIVE_LIFT = Gauge(
    "finetune_ab_test_relative_lift",
    "Relative lift of treatment over control: the estimate and its confidence bounds (bound=estimate|ci_low|ci_high).",
    ["bound"],
    registry=REGISTRY,
)
AB_SRM_P_VALUE = Gauge(
    "finetune_ab_test_srm_p_value", "Sample-ratio-mismatch p-value of the latest experiment.", registry=REGISTRY
)
AB_DECISION = Gauge(
    "finetune_ab_test_decision",
    "1 for the latest experiment decision's code (win, not_significant, worse, guardrail, harm_alarm, srm, "
    "too_few_users, no_data, windows_open, or an early stop such as stop_harm / stop_srm).",
    ["code"],
    registry=REGISTRY,
)
AB_HARM = Gauge(
    "finetune_ab_test_harm_detected",
    "1 if the latest experiment found the candidate harmful (significantly worse, or stopped for harm).",
    registry=REGISTRY,
)

_touched: set[str] = set()


class _Touched(Collector):
    """The metrics this process has set: a push never overwrites another step's metrics with defaults."""

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(names)

    def collect(self) -> list[Metric]:
        return [metric for metric in REGISTRY.collect() if metric.name in self._names]


def _mark(*metrics: Gauge | Counter) -> None:
    _touched.update(family.name for metric in metrics for family in metric.describe())


def _redacted(url: str) -> str:
    """The URL without credentials (a user:password@ part), fit for a log line."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
    except ValueError:
        return "<not a URL>"


def push(warn: Warn | None = None) -> bool:
    """POST this process's metrics to `$PROMETHEUS_PUSHGATEWAY_URL`; False (and a warning) when not pushed."""
    url = os.environ.get(PUSHGATEWAY_ENV, "").strip()
    if not url or not _touched:
        return False
    try:
        pushadd_to_gateway(url, job=PUSH_JOB, registry=_Touched(_touched), timeout=PUSH_TIMEOUT_S)
    except Exception as exc:  # any failure, even a malformed URL: monitoring must never fail a run
        (warn or _log.warning)(f"metrics not pushed to {PUSHGATEWAY_ENV}={_redacted(url)}: {exc}")
        return False
    return True


def _state(gauge: Gauge, current: str) -> None:
    """A state set: only the current value is present (the POST drops the previous one from the gateway)."""
    gauge.clear()
    gauge.labels(current).set(1)


def report_qualifying(waiting: int, warn: Warn | None = None) -> bool:
    QUALIFYING_EXAMPLES.set(waiting)
    _mark(QUALIFYING_EXAMPLES)
    return push(warn)


def report_run_request(sensor: str, warn: Warn | None = None) -> bool:
    SENSOR_RUN_REQUESTS.labels(sensor).inc()
    _mark(SENSOR_RUN_REQUESTS)
    return push(warn)


def report_run_failure(job: str, warn: Warn | None = None) -> bool:
    RUN_FAILURES.labels(job).inc()
    _mark(RUN_FAILURES)
    return push(warn)


def report_dataset(*, train: int, holdout: int, rejected: int, warn: Warn | None = None) -> bool:
    for role, count in (("train", train), ("holdout", holdout), ("rejected", rejected)):
        DATASET_EXAMPLES.labels(role).set(count)
    _mark(DATASET_EXAMPLES)
    return push(warn)


def report_fine_tune(*, status: str, trained_tokens: int, cost_usd: float, warn: Warn | None = None) -> bool:
    _state(FINE_TUNE_JOB_STATUS, status)
    TRAINED_TOKENS.set(trained_tokens)
    COST_USD.set(cost_usd)
    _mark(FINE_TUNE_JOB_STATUS, TRAINED_TOKENS, COST_USD)
    if status == "succeeded":
        LAST_SUCCESS.set_to_current_time()
        _mark(LAST_SUCCESS)
    return push(warn)


def report_evaluation(scores: Mapping[str, Mapping[str, float]], *, passed: bool, warn: Warn | None = None) -> bool:
    """`scores`: {"candidate": {"heldout_loss": …, "predicted_engagement": …}, "champion": {…}}."""
    for model, row in scores.items():
        if "heldout_loss" in row:  # absent where the model's API cannot score text (OpenAI)
            HELDOUT_LOSS.labels(model).set(row["heldout_loss"])
        PREDICTED_ENGAGEMENT.labels(model).set(row["predicted_engagement"])
    EVALUATION_PASSED.set(1 if passed else 0)
    _mark(HELDOUT_LOSS, PREDICTED_ENGAGEMENT, EVALUATION_PASSED)
    return push(warn)


def report_monitor(action: str, warn: Warn | None = None) -> bool:
    """An hourly monitor look: only an early stop (stop_harm, stop_srm) changes what is reported, at once,
    rather than when the decision run that follows it finishes."""
    if action == "continue":
        return False
    _state(AB_DECISION, action)
    AB_HARM.set(1 if action in HARM_CODES else 0)
    _mark(AB_DECISION, AB_HARM)
    return push(warn)


def report_ab_outcome(
    *,
    users: Mapping[str, int],
    rates: Mapping[str, float],
    lift: tuple[float, float, float] | None,
    srm_p_value: float,
    code: str,
    warn: Warn | None = None,
) -> bool:
    """An experiment's numbers and decision code: `rates` of the arms that have users, `lift` as
    (estimate, ci_low, ci_high) when estimable, `code` a decision code or the monitor's early stop."""
    AB_USERS.clear()
    AB_ENGAGEMENT_RATE.clear()
    AB_RELATIVE_LIFT.clear()
    for arm, count in users.items():
        AB_USERS.labels(arm).set(count)
    for arm, rate in rates.items():
        AB_ENGAGEMENT_RATE.labels(arm).set(rate)
    if lift is not None:
        for bound, value in zip(("estimate", "ci_low", "ci_high"), lift, strict=True):
            AB_RELATIVE_LIFT.labels(bound).set(value)
    AB_SRM_P_VALUE.set(srm_p_value)
    _state(AB_DECISION, code)
    AB_HARM.set(1 if code in HARM_CODES else 0)
    _mark(AB_USERS, AB_ENGAGEMENT_RATE, AB_RELATIVE_LIFT, AB_SRM_P_VALUE, AB_DECISION, AB_HARM)
    return push(warn)
