"""Kubernetes settings of the code location: per-step resources (op tags) and the executor.

`k8s_job_executor` runs each step in its own Kubernetes Job and reads the `dagster-k8s/config` op tags; the
default multiprocess executor runs the whole run inside the run pod (the launcher's `runK8sConfig`) and ignores
them. Production selects the former with `FINETUNE_EXECUTOR=k8s` (helm-values.yaml sets it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from finetune_assets.settings import ConfigError

K8S_CONFIG_TAG = "dagster-k8s/config"
EXECUTOR_ENV = "FINETUNE_EXECUTOR"
EXECUTORS = ("multiprocess", "k8s")
GPUS_ENV = "FINETUNE_K8S_GPUS"
GPU_RESOURCE = "nvidia.com/gpu"


def gpus_per_step(requested: int) -> int:
    """GPUs a GPU step asks for: `requested`, or `FINETUNE_K8S_GPUS` (0 on a cluster without GPU nodes)."""
    raw = os.environ.get(GPUS_ENV, "").strip()
    if not raw or not requested:
        return requested
    if not raw.isdigit():
        raise ConfigError(f"{GPUS_ENV}={raw!r}: expected a whole number of GPUs per training step, such as 0 or 1")
    return int(raw)


def k8s_resources(
    *, cpu: str = "1", memory: str = "1Gi", cpu_limit: str = "2", memory_limit: str = "4Gi", gpus: int = 0
) -> dict[str, Any]:
    """The seed's defaults: requests 1 CPU / 1Gi, limits 2 CPU / 4Gi.

    `gpus` adds an `nvidia.com/gpu` limit and the toleration of the taint GPU node pools usually carry.
    """
    limits: dict[str, str] = {"cpu": cpu_limit, "memory": memory_limit}
    config: dict[str, Any] = {"container_config": {"resources": {"requests": {"cpu": cpu, "memory": memory}}}}
    gpus = gpus_per_step(gpus)
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
        config["pod_spec_config"] = {
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
        }
    config["container_config"]["resources"]["limits"] = limits
    return {K8S_CONFIG_TAG: config}


def select_executor(environ: Mapping[str, str] | None = None) -> dg.ExecutorDefinition | None:
    """`FINETUNE_EXECUTOR=k8s` → `k8s_job_executor` (one Job per step; needs the K8sRunLauncher instance).

    Unset or `multiprocess` → None: Dagster's default executor. dagster_k8s is imported only when selected,
    which keeps loading the definitions light everywhere else.
    """
    value = (os.environ if environ is None else environ).get(EXECUTOR_ENV, "").strip() or "multiprocess"
    if value not in EXECUTORS:
        raise ConfigError(f"{EXECUTOR_ENV}={value!r}: expected one of {', '.join(EXECUTORS)}")
    if value == "multiprocess":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor


def model_step_resources() -> dict[str, Any]:
    """Training and evaluation load the model: more memory, and a GPU for the local backend."""
    return k8s_resources(cpu="2", memory="4Gi", cpu_limit="4", memory_limit="16Gi", gpus=1)
