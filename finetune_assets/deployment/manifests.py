"""The Kubernetes manifests a user applies next to the official Dagster Helm chart (`finetune-assets k8s render`).

The chart creates Dagster itself (webserver, daemon, the code server from our image, run Jobs); these are ours:
the pipeline config as a ConfigMap (the one file `FINETUNE_CONFIG` points at), the state volume every run and
step pod mounts, the PrometheusRule and the Grafana dashboard. Secrets are never rendered: their values come
from the user's environment (deploy/create-secrets.sh). The rules and the dashboard are edited as files in
`deploy/`; the ConfigMap and the volume are generated, and `deploy/` holds their default rendering.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from finetune_assets.settings import ConfigError, load_settings

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
PARTS = ("configmap", "state-volume", "rules", "dashboard")
CONFIG_MAP_NAME = "finetune-pipeline-config"
CONFIG_KEY = "pipeline_config.yaml"
STATE_CLAIM_NAME = "finetune-state"
DEFAULT_STATE_SIZE = "50Gi"
RULES_FILE = "prometheus-rules.yaml"
DASHBOARD_FILE = "grafana-dashboard.json"
DASHBOARD_CONFIG_MAP_NAME = "finetune-assets-grafana-dashboard"
HEADER = (
    "# Rendered by `finetune-assets k8s render`; apply in the Helm release's namespace: kubectl apply -n NS -f -\n"
    "# Secrets are not rendered (their values never live in a file): run deploy/create-secrets.sh first.\n"
)


def _metadata(name: str, component: str, namespace: str | None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/name": "finetune-assets", "app.kubernetes.io/component": component, **labels},
    }
    if namespace:
        meta["namespace"] = namespace
    return meta


def pipeline_config_map(config_path: Path, namespace: str | None = None) -> dict[str, Any]:
    """The config file, verbatim (comments too), after it validates: a bad file never reaches the cluster."""
    load_settings(config_path)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(CONFIG_MAP_NAME, "pipeline-config", namespace),
        "data": {CONFIG_KEY: config_path.read_text(encoding="utf-8")},
    }


def state_volume_claim(
    size: str = DEFAULT_STATE_SIZE, storage_class: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    """`FINETUNE_STATE_DIR` for every pod: with `k8s_job_executor` the training step and the evaluation step run
    in different pods (maybe nodes) and share the trained adapter through it, hence ReadWriteMany."""
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(STATE_CLAIM_NAME, "state", namespace),
        "spec": spec,
    }


def _deploy_file(name: str, deploy_dir: Path) -> Path:
    path = deploy_dir / name
    if not path.is_file():
        raise ConfigError(f"{path}: not found (k8s render reads deploy/ from a checkout of finetune-assets)")
    return path


def prometheus_rules(namespace: str | None = None, deploy_dir: Path = DEPLOY_DIR) -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(_deploy_file(RULES_FILE, deploy_dir).read_text(encoding="utf-8"))
    if namespace:
        rules["metadata"]["namespace"] = namespace
    return rules


def grafana_dashboard_config_map(namespace: str | None = None, deploy_dir: Path = DEPLOY_DIR) -> dict[str, Any]:
    """The dashboard for the Grafana sidecar of kube-prometheus-stack, which loads ConfigMaps labelled
    `grafana_dashboard: "1"` (or import deploy/grafana-dashboard.json by hand)."""
    dashboard = json.loads(_deploy_file(DASHBOARD_FILE, deploy_dir).read_text(encoding="utf-8"))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(DASHBOARD_CONFIG_MAP_NAME, "dashboard", namespace, grafana_dashboard="1"),
        "data": {"finetune-assets.json": json.dumps(dashboard, indent=2) + "\n"},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the embedded config and dashboard stay readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(
    parts: Sequence[str] = PARTS,
    *,
    config_path: Path,
    namespace: str | None = None,
    state_size: str = DEFAULT_STATE_SIZE,
    storage_class: str | None = None,
    deploy_dir: Path = DEPLOY_DIR,
) -> str:
    """The chosen manifests as one multi-document YAML stream, in `PARTS` order."""
    builders = {
        "configmap": lambda: pipeline_config_map(config_path, namespace),
        "state-volume": lambda: state_volume_claim(state_size, storage_class, namespace),
        "rules": lambda: prometheus_rules(namespace, deploy_dir),
        "dashboard": lambda: grafana_dashboard_config_map(namespace, deploy_dir),
    }
    documents = [builders[part]() for part in PARTS if part in parts]
    return HEADER + yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
