"""Per-step Kubernetes resources, read by `k8s_job_executor` from each asset's `op_tags`."""

from __future__ import annotations

from typing import Any

K8S_CONFIG_TAG = "dagster-k8s/config"


def k8s_resources(
    *, cpu: str = "1", memory: str = "1Gi", cpu_limit: str = "2", memory_limit: str = "4Gi", gpus: int = 0
) -> dict[str, Any]:
    """The seed's defaults: requests 1 CPU / 1Gi, limits 2 CPU / 4Gi; `gpus` adds `nvidia.com/gpu`."""
    limits: dict[str, str] = {"cpu": cpu_limit, "memory": memory_limit}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {
        K8S_CONFIG_TAG: {
            "container_config": {"resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}}
        }
    }
