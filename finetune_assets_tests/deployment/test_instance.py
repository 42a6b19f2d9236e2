"""deploy/dagster.yaml, the production instance: Dagster's instance schema and K8sRunLauncher's own config."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher

from finetune_assets_tests.deployment.conftest import INSTANCE


def test_instance_schema_accepts_the_production_instance(tmp_path: Path) -> None:
    shutil.copy(INSTANCE, tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert set(config["storage"]) == {"postgres"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_launcher_config_is_valid_for_k8s_run_launcher(instance_config: dict[str, Any]) -> None:
    launcher = instance_config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors


def test_a_misspelt_launcher_key_is_rejected_with_the_expected_shape(instance_config: dict[str, Any]) -> None:
    config = {**instance_config["run_launcher"]["config"], "job_namespacee": "dagster"}
    result = validate_config(K8sRunLauncher.config_type(), config)
    assert not result.success
    (error,) = result.errors
    assert 'unexpected config entry "job_namespacee"' in error.message
    assert "job_namespace?" in error.message


def test_no_secret_value_in_the_instance() -> None:
    text = INSTANCE.read_text()
    assert "password:\n        env: DAGSTER_PG_PASSWORD" in text
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if "password" in key and "secret" not in key:
            assert value.strip() == "", f"a password value in {INSTANCE.name}: {line.strip()}"
