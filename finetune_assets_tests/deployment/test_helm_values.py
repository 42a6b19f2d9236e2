"""helm-values.yaml against the official dagster/dagster chart: its JSON schema over the merged values, as
`helm install` checks them, and agreement with the rest of the deployment (instance, image, jobs, config)."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from finetune_assets.deployment import manifests as deploy
from finetune_assets.deployment.k8s import EXECUTOR_ENV, GPUS_ENV
from finetune_assets.jobs import finetune_cycle_job
from finetune_assets.settings import CONFIG_ENV, STATE_DIR_ENV
from finetune_assets_tests.deployment.conftest import (
    CHART_COMMIT,
    CHART_DEFAULTS,
    CHART_SCHEMA,
    CHART_SHA256,
    K8S_VERSIONS,
    REPO,
    SEED_RESOURCES,
    helm_merge,
    sha256,
)

# The chart's schema refers to these Kubernetes definitions by URL; the same definitions ship offline with
# kubernetes-validate (as `$defs`, and non-strict like the chart's URL).
K8S_DEFINITIONS_URL = "https://raw.githubusercontent.com/yannh/kubernetes-json-schema/master/v1.19.0/_definitions.json"


def chart_validator(schema: dict[str, Any], k8s_version: str) -> jsonschema.protocols.Validator:
    bundled = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads((bundled / f"v{k8s_version}.0-local" / "_definitions.json").read_text())["$defs"]
    registry: Registry = Registry().with_resource(
        K8S_DEFINITIONS_URL, DRAFT202012.create_resource({"definitions": definitions, "$defs": definitions})
    )
    return jsonschema.validators.validator_for(schema)(schema, registry=registry)


def errors(validator: jsonschema.protocols.Validator, values: dict[str, Any]) -> list[tuple[str, str]]:
    return [("/".join(map(str, e.absolute_path)), e.message) for e in validator.iter_errors(values)]


@pytest.fixture(scope="module")
def merged(chart_defaults: dict[str, Any], helm_values: dict[str, Any]) -> dict[str, Any]:
    return helm_merge(chart_defaults, helm_values)


def test_chart_files_are_the_unmodified_upstream_ones() -> None:
    for path in (CHART_SCHEMA, CHART_DEFAULTS):
        assert sha256(path) == CHART_SHA256[path.name], f"{path} differs from dagster-io/dagster@{CHART_COMMIT}"


def test_helm_merge_is_helms() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"z": 1}}
    assert helm_merge(base, {"a": {"y": [3]}, "b": None, "c": {"w": 2}}) == {
        "a": {"x": 1, "y": [3]},
        "c": {"z": 1, "w": 2},
    }
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"z": 1}}


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_values_merged_over_the_chart_defaults_validate(
    chart_schema: dict[str, Any], chart_defaults: dict[str, Any], merged: dict[str, Any], k8s_version: str
) -> None:
    validator = chart_validator(chart_schema, k8s_version)
    assert errors(validator, chart_defaults) == []
    assert errors(validator, merged) == []


def _deployment(values: dict[str, Any]) -> dict[str, Any]:
    return values["dagster-user-deployments"]["deployments"][0]


@pytest.mark.parametrize(
    ("mistake", "where", "message"),
    [
        (lambda v: _deployment(v).update(port="3030"), "deployments/0/port", "'3030' is not of type 'integer'"),
        (
            lambda v: _deployment(v).update(envSecrets=["openai-credentials"]),
            "deployments/0/envSecrets",
            "is not valid under any of the given schemas",
        ),
        (
            lambda v: v["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"].update(containerConfigg={}),
            "runLauncher/config/k8sRunLauncher",
            "is not valid under any of the given schemas",
        ),
        # A type error inside a Kubernetes object: caught only through the registered remote definitions.
        (
            lambda v: _deployment(v)["volumeMounts"][0].update(readOnly="yes"),
            "deployments/0/volumeMounts",
            "is not valid under any of the given schemas",
        ),
        (lambda v: v["runLauncher"].update(type="K8sLauncher"), "runLauncher/type", "is not one of"),
    ],
    ids=["port-as-string", "secret-as-string", "unknown-runK8sConfig-key", "k8s-type-error", "launcher-type"],
)
def test_a_wrong_value_fails(
    chart_schema: dict[str, Any], merged: dict[str, Any], mistake: Any, where: str, message: str
) -> None:
    values = copy.deepcopy(merged)
    mistake(values)
    found = errors(chart_validator(chart_schema, K8S_VERSIONS[0]), values)
    assert any(path.endswith(where) and message in text for path, text in found), found


def test_no_secret_value_in_the_file(helm_values: dict[str, Any]) -> None:
    def leaves(node: Any, path: str = "") -> list[tuple[str, Any]]:
        if isinstance(node, dict):
            return [leaf for key, value in node.items() for leaf in leaves(value, f"{path}.{key}")]
        if isinstance(node, list):
            return [leaf for i, value in enumerate(node) for leaf in leaves(value, f"{path}[{i}]")]
        return [(path, node)]

    secret_like = re.compile(r"(password|passwd|token|api_?key|secret_?key|credentials?)$", re.IGNORECASE)
    found = [(path, value) for path, value in leaves(helm_values) if secret_like.search(path.split(".")[-1])]
    assert found == []
    text = (REPO / "helm-values.yaml").read_text()
    assert not re.search(r"sk-[A-Za-z0-9]{8,}|postgres(ql)?(\+\w+)?://[^\s:@/]+:[^\s@/]+@", text)
    assert helm_values["generatePostgresqlPasswordSecret"] is False  # the chart would otherwise want a password


def test_user_deployment_serves_the_definitions_like_the_image(user_deployment: dict[str, Any]) -> None:
    cmd = next(line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    image_args = json.loads(cmd.removeprefix("CMD "))
    assert image_args[:3] == ["dagster", "api", "grpc"]
    assert image_args[image_args.index("-p") + 1] == str(user_deployment["port"]) == "3030"
    assert image_args[image_args.index("-m") :] == user_deployment["dagsterApiGrpcArgs"]
    assert user_deployment["dagsterApiGrpcArgs"][:2] == ["-m", "finetune_assets.definitions"]
    assert "USER 10001:10001" in (REPO / "Dockerfile").read_text()
    assert user_deployment["podSecurityContext"]["runAsUser"] == 10001
    assert {"name": "openai-credentials"} in user_deployment["envSecrets"]


def test_config_map_and_state_volume_are_mounted_where_the_code_looks(user_deployment: dict[str, Any]) -> None:
    env = {e["name"]: e["value"] for e in user_deployment["env"]}
    volumes = {v["name"]: v for v in user_deployment["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in user_deployment["volumeMounts"]}
    config_dir, _, config_file = env[CONFIG_ENV].rpartition("/")
    assert config_file == deploy.CONFIG_KEY
    assert volumes[mounts[config_dir]]["configMap"]["name"] == deploy.CONFIG_MAP_NAME
    assert volumes[mounts[env[STATE_DIR_ENV]]]["persistentVolumeClaim"]["claimName"] == deploy.STATE_CLAIM_NAME
    assert env[EXECUTOR_ENV] == "k8s"
    assert env[GPUS_ENV].isdigit()


def test_runs_get_the_seeds_resources_one_fine_tune_at_a_time(
    helm_values: dict[str, Any], user_deployment: dict[str, Any], instance_config: dict[str, Any]
) -> None:
    launcher = helm_values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    run_k8s = launcher["config"]["k8sRunLauncher"]["runK8sConfig"]
    assert run_k8s["containerConfig"]["resources"] == SEED_RESOURCES
    # includeConfigInLaunchedRuns copies the deployment's resources onto run pods, over runK8sConfig.
    assert user_deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert user_deployment["resources"] == SEED_RESOURCES
    assert (
        instance_config["run_launcher"]["config"]["run_k8s_config"]["container_config"]["resources"] == SEED_RESOURCES
    )

    limits = helm_values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    training = [{"key": key, "value": value, "limit": 1} for key, value in finetune_cycle_job.tags.items()]
    assert limits == training
    assert instance_config["run_coordinator"]["config"]["tag_concurrency_limits"] == training
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert local["run_queue"]["tag_concurrency_limits"] == training
    assert not helm_values.get("concurrency", {}).get("enabled"), "never both concurrency and queuedRunCoordinator"


def test_daemon_retries_and_monitors_runs(helm_values: dict[str, Any], instance_config: dict[str, Any]) -> None:
    daemon = helm_values["dagsterDaemon"]
    assert daemon["runRetries"] == {"enabled": True, "maxRetries": 1, "retryOnAssetOrOpFailure": False}
    assert daemon["runMonitoring"]["enabled"] is True
    assert instance_config["run_retries"] == {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False}
    assert instance_config["run_monitoring"]["start_timeout_seconds"] == daemon["runMonitoring"]["startTimeoutSeconds"]


def test_the_instance_agrees_with_the_values(helm_values: dict[str, Any], instance_config: dict[str, Any]) -> None:
    values_launcher = helm_values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher = instance_config["run_launcher"]["config"]
    assert launcher["env_secrets"] == [s["name"] for s in values_launcher["envSecrets"]]
    assert launcher["image_pull_policy"] == values_launcher["imagePullPolicy"]
    assert launcher["security_context"] == values_launcher["securityContext"]
    assert (
        launcher["run_k8s_config"]["pod_spec_config"]["security_context"]
        == (values_launcher["runK8sConfig"]["podSpecConfig"]["securityContext"])
    )
    postgres = instance_config["storage"]["postgres"]["postgres_db"]
    values_postgres = helm_values["postgresql"]
    assert values_postgres["enabled"] is False
    assert (postgres["hostname"], postgres["username"], postgres["db_name"], postgres["port"]) == (
        values_postgres["postgresqlHost"],
        values_postgres["postgresqlUsername"],
        values_postgres["postgresqlDatabase"],
        values_postgres["service"]["port"],
    )
    assert postgres["password"] == {"env": "DAGSTER_PG_PASSWORD"}


def test_secrets_script_creates_every_secret_the_values_name(helm_values: dict[str, Any]) -> None:
    script = (REPO / "deploy" / "create-secrets.sh").read_text()
    created = set(re.findall(r"^apply_secret ([a-z0-9-]+) ", script, re.MULTILINE))
    deployment = _deployment(helm_values)
    named = {s["name"] for s in deployment["envSecrets"]} | {helm_values["global"]["postgresqlSecretName"]}
    assert created == named
    assert "kubectl create secret generic" in script
