"""deploy/prometheus-rules.yaml and deploy/grafana-dashboard.json parse, and name only metrics the code emits."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_assets.reporting import metrics as observability
from finetune_assets_tests.deployment.conftest import REPO

DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\bfinetune_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prometheus-rules.yaml").read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


@pytest.fixture(scope="module")
def emitted() -> set[str]:
    """Every sample name the exposition carries once each report function has run (no gateway set)."""
    observability.report_qualifying(5)
    observability.report_run_request("training_data_sensor")
    observability.report_run_failure("finetune_cycle_job")
    observability.report_dataset(train=10, holdout=2, rejected=1)
    observability.report_fine_tune(status="succeeded", trained_tokens=100, cost_usd=0.0)
    observability.report_evaluation(
        {
            "candidate": {"heldout_loss": 1.0, "predicted_engagement": 0.05},
            "champion": {"heldout_loss": 1.2, "predicted_engagement": 0.04},
        },
        passed=True,
    )
    observability.report_ab_outcome(
        users={"control": 100, "treatment": 101},
        rates={"control": 0.03, "treatment": 0.04},
        lift=(0.3, 0.1, 0.5),
        srm_p_value=0.9,
        code="win",
    )
    return {
        sample.name
        for family in observability.REGISTRY.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def alert_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["spec"]["groups"] for rule in group["rules"]]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_rules_are_a_prometheus_rule_with_the_required_alerts(rules: dict[str, Any]) -> None:
    assert (rules["apiVersion"], rules["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    alerts = {rule["alert"]: rule for rule in alert_rules(rules)}
    required = {
        "FinetuneRunFailed",  # a job failed
        "FinetuneTrainingJobFailed",
        "FinetuneNoTrainingForTwoWeeks",
        "FinetuneABTestSampleRatioMismatch",
        "FinetuneABTestHarm",  # harm stop
    }
    assert required <= set(alerts)
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")")
    assert "14 * 24 * 3600" in alerts["FinetuneNoTrainingForTwoWeeks"]["expr"]
    assert alerts["FinetuneABTestHarm"]["labels"]["severity"] == "critical"


def test_dashboard_is_grafana_json_over_a_prometheus_datasource(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "finetune-assets" and dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]


def test_every_metric_named_is_one_the_code_emits(
    rules: dict[str, Any], dashboard: dict[str, Any], emitted: set[str]
) -> None:
    named = {
        m for expr in [r["expr"] for r in alert_rules(rules)] + dashboard_exprs(dashboard) for m in METRIC.findall(expr)
    }
    assert named, "no metric found in the rules or the dashboard"
    assert named - emitted == set()


def test_the_dashboard_shows_every_metric(dashboard: dict[str, Any], emitted: set[str]) -> None:
    shown = {m for expr in dashboard_exprs(dashboard) for m in METRIC.findall(expr)}
    assert emitted - shown == set()


def test_labels_the_rules_read_are_the_code_s(rules: dict[str, Any], emitted: set[str]) -> None:
    by_name = {
        sample.name: set(sample.labels) for family in observability.REGISTRY.collect() for sample in family.samples
    }
    for rule in alert_rules(rules):
        for metric, labels in re.findall(r"(finetune_[a-z0-9_]+)\{([^}]*)\}", rule["expr"]):
            used = {part.split("=")[0].strip().rstrip("!~") for part in labels.split(",")}
            assert used <= by_name[metric], (rule["alert"], metric, used)
        for label in re.findall(r"\$labels\.([a-z_]+)", json.dumps(rule["annotations"])):
            assert any(label in labels for labels in by_name.values()), (rule["alert"], label)


def test_every_report_function_is_called_by_an_asset_or_sensor() -> None:
    package = Path(observability.__file__).parent
    sources = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "observability.py")
    recorders = [
        name for name, _ in inspect.getmembers(observability, inspect.isfunction) if name.startswith("report_")
    ]
    assert recorders
    for name in recorders:
        assert re.search(rf"(?<![.\w]){name}\(", sources), f"{name} is never called: its metrics would never be pushed"
