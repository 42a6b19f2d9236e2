"""`finetune-assets k8s render`: the manifests a user applies, valid for Kubernetes, in step with deploy/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from finetune_assets.cli import main
from finetune_assets.deployment import manifests as deploy
from finetune_assets.settings import parse_settings
from finetune_assets_tests.conftest import write_config
from finetune_assets_tests.deployment.conftest import K8S_VERSIONS, REPO

PIPELINE_CONFIG = REPO / "pipeline_config.yaml"


def rendered(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["--config", str(PIPELINE_CONFIG), "k8s", "render", *args]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_renders_what_the_chart_does_not_create(capsys: pytest.CaptureFixture[str]) -> None:
    documents = rendered(capsys)
    assert [(d["kind"], d["metadata"]["name"]) for d in documents] == [
        ("ConfigMap", deploy.CONFIG_MAP_NAME),
        ("PersistentVolumeClaim", deploy.STATE_CLAIM_NAME),
        ("PrometheusRule", "finetune-assets"),
        ("ConfigMap", deploy.DASHBOARD_CONFIG_MAP_NAME),
    ]
    assert all("namespace" not in d["metadata"] for d in documents)
    assert not any(d["kind"] == "Secret" for d in documents)
    for document in documents:
        if document["kind"] != "PrometheusRule":  # a CRD: no schema ships with Kubernetes
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(document, version, strict=True)


def test_config_map_carries_the_config_verbatim_and_valid(capsys: pytest.CaptureFixture[str]) -> None:
    (config_map,) = rendered(capsys, "configmap")
    text = config_map["data"][deploy.CONFIG_KEY]
    assert text == PIPELINE_CONFIG.read_text()
    settings = parse_settings(yaml.safe_load(text), source="ConfigMap", environ={})
    assert (settings.training_data_threshold, settings.engagement_threshold, settings.a_b_test_duration_hours) == (
        100,
        0.06,
        168,
    )


def test_dashboard_config_map_is_for_the_grafana_sidecar(capsys: pytest.CaptureFixture[str]) -> None:
    (config_map,) = rendered(capsys, "dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (dashboard,) = (json.loads(text) for text in config_map["data"].values())
    assert dashboard == json.loads((REPO / "deploy" / deploy.DASHBOARD_FILE).read_text())


@pytest.mark.parametrize(
    ("part", "committed"), [("configmap", "pipeline-config.configmap.yaml"), ("state-volume", "state-volume.yaml")]
)
def test_deploy_holds_the_current_rendering(capsys: pytest.CaptureFixture[str], part: str, committed: str) -> None:
    assert main(["--config", str(PIPELINE_CONFIG), "k8s", "render", part]) == 0
    assert capsys.readouterr().out == (REPO / "deploy" / committed).read_text(), (
        f"deploy/{committed} is stale: finetune-assets k8s render {part} > deploy/{committed}"
    )


def test_options_set_namespace_size_and_storage_class(capsys: pytest.CaptureFixture[str]) -> None:
    documents = rendered(capsys, "--namespace", "ml-prod", "--state-size", "200Gi", "--storage-class", "efs-sc")
    assert {d["metadata"]["namespace"] for d in documents} == {"ml-prod"}
    claim = next(d for d in documents if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert claim["spec"]["storageClassName"] == "efs-sc"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finetune_assets.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["secrets"], "argument PART: 'secrets': expected one of configmap, state-volume, rules, dashboard"),
        (["--namespace", "ML_prod"], "argument --namespace: 'ML_prod': expected a Kubernetes namespace name"),
        (["--state-size", "50GB"], "argument --state-size: '50GB': expected a positive Kubernetes quantity"),
        (["--state-size", "0"], "argument --state-size: '0': expected a positive Kubernetes quantity"),
        (["--storage-class", "EFS SC"], "argument --storage-class: 'EFS SC': expected a Kubernetes object name"),
    ],
)
def test_a_bad_option_is_one_clear_error(args: list[str], message: str) -> None:
    result = run_cli("k8s", "render", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_a_bad_config_is_refused_before_it_reaches_the_cluster(tmp_path: Path, state_dir: Path) -> None:
    bad = write_config(tmp_path / "bad.yaml", state_dir, engagement_threshold=2)
    result = run_cli("--config", str(bad), "k8s", "render", "configmap")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "engagement_threshold = 2: input should be less than 1" in result.stderr


def test_outside_a_checkout_render_says_where_deploy_should_be(tmp_path: Path) -> None:
    from finetune_assets.settings import ConfigError

    with pytest.raises(ConfigError, match=r"prometheus-rules.yaml: not found \(k8s render reads deploy/"):
        deploy.render(["rules"], config_path=PIPELINE_CONFIG, deploy_dir=tmp_path)


def test_secrets_script_passes_values_from_the_environment_only(tmp_path: Path) -> None:
    """deploy/create-secrets.sh against a stand-in kubectl that records its arguments (no cluster here)."""
    log = tmp_path / "kubectl.log"
    stub = tmp_path / "kubectl"
    stub.write_text(f'#!/usr/bin/env bash\necho "$@" >> {log}\n[ "$1" = get ] && exit 0\ncat >/dev/null || true\n')
    stub.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "NAMESPACE": "ml-prod"}
    script = str(REPO / "deploy" / "create-secrets.sh")
    missing = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=30)
    assert missing.returncode != 0 and "export OPENAI_API_KEY" in missing.stderr
    values = {"OPENAI_API_KEY": "sk-test-123", "DATABASE_URL": "postgresql://u:p@db/x", "DAGSTER_PG_PASSWORD": "pw"}
    done = subprocess.run(["bash", script], capture_output=True, text=True, env={**env, **values}, timeout=30)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    creates = [c for c in calls if c.startswith("create secret generic")]
    assert [c.split()[3] for c in creates] == ["openai-credentials", "finetune-database", "dagster-postgresql-secret"]
    assert "--from-literal=OPENAI_API_KEY=sk-test-123" in creates[0]
    assert "--from-literal=postgresql-password=pw" in creates[2]
    assert all("--namespace ml-prod" in c for c in creates)
