"""The deployment files, the official chart's schema and defaults, and offline Kubernetes fixtures.

The chart's files are vendored, unmodified, in `chart/` (where they come from and how to refresh them:
`chart/README.md`); their hashes are pinned below. A missing file fails the test under CI (`CI=true`) and skips
it, with the reason, in a local checkout.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes_validate.utils import latest_version, major_minor

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = Path(__file__).resolve().parent / "chart"
CHART_COMMIT = "437f92d953812a3efdf5a464ba196eb3fcd9a777"
"""The dagster-io/dagster commit the vendored chart files come from."""
CHART_SCHEMA = CHART_DIR / "values.schema.json"
CHART_DEFAULTS = CHART_DIR / "values.yaml"
CHART_SHA256 = {
    CHART_SCHEMA.name: "b9e0afe0fb0cf090ec6298cbc5b09bfd0bbe1118a3aba1da0dc4792aaa1c667b",
    CHART_DEFAULTS.name: "6332c7f8093273d9382a533d7f81224439d6aa10d2bc56078d13a9a432e25175",
}
HELM_VALUES = REPO / "helm-values.yaml"
INSTANCE = REPO / "deploy" / "dagster.yaml"
K8S_VERSIONS = ("1.30", major_minor(latest_version()))
"""Kubernetes releases the manifests are validated against: an older supported one and the newest bundled."""
SEED_RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
# What the chart puts in the pods' environment (dagster-io/dagster helm/dagster templates), for `{env: ...}`.
CHART_ENV = {
    "DAGSTER_HOME": "/opt/dagster/dagster_home",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
    "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
    "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "dagster-pipeline-env",
}


def chart_file(path: Path) -> str:
    """The vendored chart file's text; when it is missing, a failure under CI and a skip elsewhere."""
    if not path.is_file():
        reason = (
            f"{path} is missing: the official chart's {path.name} is vendored in {CHART_DIR} "
            "(see its README.md to restore it)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path.read_text(encoding="utf-8")


def helm_merge(base: Any, override: Any) -> Any:
    """Helm's coalescing of a values file over the chart's: maps merge, lists and scalars replace, null deletes."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = helm_merge(merged.get(key), value)
    return merged


@pytest.fixture(scope="session")
def chart_schema() -> dict[str, Any]:
    return json.loads(chart_file(CHART_SCHEMA))


@pytest.fixture(scope="session")
def chart_defaults() -> dict[str, Any]:
    return yaml.safe_load(chart_file(CHART_DEFAULTS))


@pytest.fixture(scope="session")
def helm_values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def user_deployment(helm_values: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = helm_values["dagster-user-deployments"]["deployments"]
    return deployment


@pytest.fixture(scope="session")
def instance_config() -> dict[str, Any]:
    return yaml.safe_load(INSTANCE.read_text(encoding="utf-8"))


@pytest.fixture
def chart_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in CHART_ENV.items():
        monkeypatch.setenv(name, value)
    return CHART_ENV


@pytest.fixture
def offline_kubeconfig(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig naming an unreachable server: the real K8sRunLauncher loads it and never connects.

    Loading it replaces the kubernetes client's default configuration, which is restored afterwards.
    """
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "offline", "user": {}}],
                "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
                "current-context": "offline",
            }
        )
    )
    saved = kubernetes.client.Configuration.get_default_copy()
    yield path
    kubernetes.client.Configuration.set_default(saved)


def sha256(path: Path) -> str:
    chart_file(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
