"""Every run and every step as the Kubernetes Job dagster-k8s would create, built offline and validated.

The pieces are dagster-k8s's own: the real K8sRunLauncher made from deploy/dagster.yaml (the instance the
chart renders, pointed at an unreachable kubeconfig), the container context the chart hands the code location
from helm-values.yaml (`includeConfigInLaunchedRuns`), `K8sContainerContext` merging, and
`construct_dagster_k8s_job`. Each manifest is then validated by kubernetes-validate (strict) and every
resource quantity parsed by the kubernetes client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.execution.api import create_execution_plan
from dagster._core.launcher import RunLauncher
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClassData
from dagster_k8s import DagsterK8sJobConfig, K8sRunLauncher, construct_dagster_k8s_job
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import get_job_name_from_run_id, get_k8s_job_name, get_user_defined_k8s_config
from kubernetes.utils import parse_quantity

from finetune_assets.definitions import defs
from finetune_assets.deployment.k8s import GPU_RESOURCE, GPUS_ENV, k8s_resources, select_executor
from finetune_assets.settings import ConfigError
from finetune_assets_tests.deployment.conftest import K8S_VERSIONS, SEED_RESOURCES

RELEASE = NAMESPACE = "dagster"
RUN_ID = "5e1f0c3a-9b7d-4e2a-8c61-0d2f4a7b9e13"
JOBS = ("finetune_cycle_job", "ab_test_decision_job")


def chart_container_context(deployment: dict[str, Any]) -> dict[str, Any]:
    """What the chart passes the code server as its container context, hence to every run it launches
    (`dagsterUserDeployments.k8sContainerContext`, charts/dagster-user-deployments/templates/helpers)."""
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{RELEASE}-dagster-user-deployments-{deployment['name']}-user-env"]
        + [c["name"] for c in deployment.get("envConfigMaps", [])],
        "namespace": NAMESPACE,
        "service_account_name": f"{RELEASE}-dagster-user-deployments-user-deployments",
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in deployment["envSecrets"]]
    for value_key, context_key in (
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
        ("labels", "labels"),
        ("resources", "resources"),
    ):
        if deployment.get(value_key):
            k8s[context_key] = deployment[value_key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    return {"k8s": k8s}


def image_of(deployment: dict[str, Any]) -> str:
    return f"{deployment['image']['repository']}:{deployment['image']['tag']}"


@pytest.fixture
def launcher(instance_config: dict[str, Any], chart_env: dict[str, str], offline_kubeconfig: Path) -> K8sRunLauncher:
    """The instance's launcher, rehydrated as the instance does it; only the kubeconfig source differs."""
    config = {
        **instance_config["run_launcher"]["config"],
        "load_incluster_config": False,
        "kubeconfig_file": str(offline_kubeconfig),
    }
    launcher = ConfigurableClassData("dagster_k8s", "K8sRunLauncher", yaml.safe_dump(config)).rehydrate(
        as_type=RunLauncher
    )
    assert isinstance(launcher, K8sRunLauncher)
    return launcher


def dagster_run(job_name: str, deployment: dict[str, Any]) -> DagsterRun:
    origin = JobPythonOrigin(
        job_name,
        RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer("finetune_assets.definitions", "defs", None),
            container_image=image_of(deployment),
            container_context=chart_container_context(deployment),
        ),
    )
    tags = dict(defs.resolve_job_def(job_name).tags)
    return DagsterRun(job_name=job_name, run_id=RUN_ID, tags=tags, job_code_origin=origin)


def serialized(job: kubernetes.client.V1Job) -> dict[str, Any]:
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def run_manifest(launcher: K8sRunLauncher, run: DagsterRun) -> dict[str, Any]:
    """As K8sRunLauncher._launch_k8s_job_with_args builds the run worker's Job."""
    context = launcher.get_container_context_for_run(run)
    job_config = context.get_k8s_job_config(
        job_image=run.job_code_origin.repository_origin.container_image, run_launcher=launcher
    )
    name = get_job_name_from_run_id(run.run_id)
    return serialized(
        construct_dagster_k8s_job(
            job_config=job_config,
            args=["dagster", "api", "execute_run", "{}"],
            job_name=name,
            pod_name=name,
            component="run_worker",
            user_defined_k8s_config=context.run_k8s_config,
            labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
        )
    )


def step_manifest(
    launcher: K8sRunLauncher, run: DagsterRun, step_key: str, step_tags: dict[str, str]
) -> dict[str, Any]:
    """As k8s_job_executor's K8sStepHandler (_get_container_context, launch_step) builds a step's Job."""
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step_tags)))
    job_config = context.get_k8s_job_config(run.job_code_origin.repository_origin.container_image, launcher)
    name = f"dagster-step-{get_k8s_job_name(run.run_id, step_key)}"
    return serialized(
        construct_dagster_k8s_job(
            job_config=job_config,
            args=["dagster", "api", "execute_step", "{}"],
            job_name=name,
            pod_name=name,
            component="step_worker",
            user_defined_k8s_config=context.run_k8s_config,
            labels={"dagster/job": run.job_name, "dagster/op": step_key, "dagster/run-id": run.run_id},
            env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": step_key}],
        )
    )


def asset_steps() -> list[tuple[str, str, dict[str, str]]]:
    steps = []
    for job_name in JOBS:
        for step in create_execution_plan(defs.resolve_job_def(job_name)).steps:
            steps.append((job_name, step.key, dict(step.tags)))
    return steps


STEPS = asset_steps()


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (main,) = manifest["spec"]["template"]["spec"]["containers"]
    return main


def validate(manifest: dict[str, Any]) -> None:
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    for version in K8S_VERSIONS:
        assert kubernetes_validate.validate(manifest, version, strict=True) == version
    for section in ("requests", "limits"):
        for resource, quantity in container(manifest)["resources"].get(section, {}).items():
            assert parse_quantity(quantity) > 0, (section, resource, quantity)


def test_every_asset_of_both_jobs_is_a_step() -> None:
    assert sorted(key for _, key, _ in STEPS) == sorted(
        ["training_data", "fine_tuned_model", "evaluation_scores", "ab_test", "ab_test_outcome", "production_model"]
    )


@pytest.mark.parametrize("job_name", JOBS)
def test_run_worker_job_is_valid_with_the_seeds_resources(
    launcher: K8sRunLauncher, user_deployment: dict[str, Any], job_name: str
) -> None:
    manifest = run_manifest(launcher, dagster_run(job_name, user_deployment))
    validate(manifest)
    main = container(manifest)
    assert main["resources"] == SEED_RESOURCES
    assert main["image"] == image_of(user_deployment)
    assert main["args"][:3] == ["dagster", "api", "execute_run"]
    secrets = [source["secretRef"]["name"] for source in main["envFrom"] if "secretRef" in source]
    assert secrets == ["openai-credentials", "finetune-database"]  # launcher's and deployment's, once each
    env = {e["name"]: e for e in main["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dagster-postgresql-secret",
        "key": "postgresql-password",
    }
    assert env["FINETUNE_CONFIG"]["value"] == "/etc/finetune/pipeline_config.yaml"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    assert {v["name"] for v in pod["volumes"]} == {"pipeline-config", "finetune-state"}
    assert pod["restartPolicy"] == "Never"


@pytest.mark.parametrize(("job_name", "step_key", "tags"), STEPS, ids=[key for _, key, _ in STEPS])
def test_step_job_is_valid_with_its_op_tag_resources(
    launcher: K8sRunLauncher, user_deployment: dict[str, Any], job_name: str, step_key: str, tags: dict[str, str]
) -> None:
    manifest = step_manifest(launcher, dagster_run(job_name, user_deployment), step_key, tags)
    validate(manifest)
    requested = json.loads(tags["dagster-k8s/config"])
    main = container(manifest)
    assert main["resources"] == requested["container_config"]["resources"]
    pod = manifest["spec"]["template"]["spec"]
    gpu = step_key in ("fine_tuned_model", "evaluation_scores")
    assert (GPU_RESOURCE in main["resources"]["limits"]) is gpu
    tolerations = [t["key"] for t in pod.get("tolerations") or []]
    assert tolerations == ([GPU_RESOURCE] if gpu else [])
    # The state volume is what lets the evaluation pod load the adapter the training pod wrote.
    assert {"mountPath": "/var/lib/finetune", "name": "finetune-state"} in main["volumeMounts"]
    assert manifest["metadata"]["labels"]["dagster/op"] == step_key
    assert len(manifest["metadata"]["name"]) <= 63


def test_deployment_resources_override_run_k8s_config_on_run_pods(
    launcher: K8sRunLauncher, user_deployment: dict[str, Any]
) -> None:
    """Why helm-values.yaml gives the code server the seed's resources too (dagster-io/dagster#22766)."""
    small = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    manifest = run_manifest(launcher, dagster_run("finetune_cycle_job", {**user_deployment, "resources": small}))
    assert container(manifest)["resources"] == small


def test_a_bad_quantity_is_caught() -> None:
    with pytest.raises(ValueError):
        parse_quantity("4GB")
    config = {"container_config": {"resources": {"limits": {"cpu": ["1"]}}}}
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image="finetune-assets:test", dagster_home="/opt/dagster/dagster_home"),
        args=["true"],
        job_name="dagster-run-bad",
        user_defined_k8s_config=get_user_defined_k8s_config({"dagster-k8s/config": json.dumps(config)}),
    )
    quantity = serialized(job)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    with pytest.raises(ValueError):
        parse_quantity(quantity)


def test_gpu_requests_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GPUS_ENV, "0")
    assert GPU_RESOURCE not in k8s_resources(gpus=1)["dagster-k8s/config"]["container_config"]["resources"]["limits"]
    assert "pod_spec_config" not in k8s_resources(gpus=1)["dagster-k8s/config"]
    monkeypatch.setenv(GPUS_ENV, "2")
    assert k8s_resources(gpus=1)["dagster-k8s/config"]["container_config"]["resources"]["limits"][GPU_RESOURCE] == "2"
    assert GPU_RESOURCE not in k8s_resources()["dagster-k8s/config"]["container_config"]["resources"]["limits"]
    monkeypatch.setenv(GPUS_ENV, "one")
    with pytest.raises(ConfigError, match=r"FINETUNE_K8S_GPUS='one': expected a whole number of GPUs"):
        k8s_resources(gpus=1)


def test_executor_is_selected_by_the_environment() -> None:
    assert select_executor({}) is None
    assert select_executor({"FINETUNE_EXECUTOR": "multiprocess"}) is None
    executor = select_executor({"FINETUNE_EXECUTOR": "k8s"})
    assert executor is not None and executor.name == "k8s"
    with pytest.raises(ConfigError, match=r"FINETUNE_EXECUTOR='celery': expected one of multiprocess, k8s"):
        select_executor({"FINETUNE_EXECUTOR": "celery"})


def test_production_definitions_run_steps_as_k8s_jobs_without_heavy_imports() -> None:
    code = (
        "import sys; from finetune_assets.definitions import defs; "
        "print(','.join(defs.resolve_job_def(j).executor_def.name for j in ('finetune_cycle_job', "
        "'ab_test_decision_job'))); "
        "print(','.join(m for m in ('torch', 'transformers', 'peft', 'mlflow') if m in sys.modules))"
    )
    env = {**os.environ, "FINETUNE_EXECUTOR": "k8s"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=60
    ).stdout.split("\n")
    assert out[0] == "k8s,k8s"
    assert out[1] == ""
