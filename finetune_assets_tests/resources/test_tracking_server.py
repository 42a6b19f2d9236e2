"""Tracking, registration and alias moves through a real `mlflow server` (the session's, on loopback).

The fault: the server goes down in the middle of `production_model` (after the version is registered, before
the alias moves). The run fails with one clear message naming the server; once it is back, the retry moves
the alias on the version it registered the first time, never a second version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow import MlflowClient

from finetune_assets.assets import production_model
from finetune_assets.resources.tracking import CHAMPION_ALIAS, TrackingResource, TrackingUnavailable
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests.conftest import record_candidate, resources_for, start_experiment
from finetune_assets_tests.fixtures.mlflow_server import MlflowServer

CYCLE = "2026-11-15"
CANDIDATE = "ft:cand"  # conftest.start_experiment's treatment model

pytestmark = pytest.mark.integration


def logged_run(tracking: TrackingResource, adapter: Path) -> str:
    """An MLflow run on the server that logged `adapter` as the fine-tune step does (artifact path `adapter`)."""
    client = MlflowClient(tracking.uri(), tracking.uri())
    experiment_id = client.create_experiment(tracking.experiment_name)
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(adapter), artifact_path="adapter")
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    path = tmp_path / "jobs" / "local-abc" / "adapter"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    return path


def test_registration_and_alias_moves_go_through_the_server(
    mlflow_server: MlflowServer, mlflow_tracking: TrackingResource, adapter: Path
) -> None:
    run_id = logged_run(mlflow_tracking, adapter)
    assert mlflow_tracking.champion() is None
    first = mlflow_tracking.register(model_id=CANDIDATE, source=str(adapter), run_id=run_id, tags={"partition": CYCLE})
    again = mlflow_tracking.register(model_id=CANDIDATE, source=str(adapter), run_id=run_id, tags={"ab": "promote"})
    assert again.version == first.version == "1"
    mlflow_tracking.promote(first, None, "base")

    client = MlflowClient(mlflow_server.url, mlflow_server.url)  # what another process sees on the server
    version = client.get_model_version_by_alias(mlflow_tracking.registered_model_name, CHAMPION_ALIAS)
    assert version.version == "1" and version.run_id == run_id
    assert version.source == f"runs:/{run_id}/adapter"  # the server refuses a bare local path
    assert version.tags["model_id"] == CANDIDATE and version.tags["previous_champion"] == "base"
    assert version.tags["partition"] == CYCLE and version.tags["ab"] == "promote"
    champion = mlflow_tracking.champion()
    assert champion is not None and champion.model_id == CANDIDATE
    found = mlflow_tracking.find_version(CANDIDATE)
    assert found is not None and found.aliases == (CHAMPION_ALIAS,)


def test_a_bare_model_id_is_registered_against_its_run(mlflow_tracking: TrackingResource, adapter: Path) -> None:
    run_id = logged_run(mlflow_tracking, adapter)
    version = mlflow_tracking.register(
        model_id="ft:gpt-4o-mini:org::abc", source="ft:gpt-4o-mini:org::abc", run_id=run_id, tags={}
    )
    stored = MlflowClient(mlflow_tracking.uri()).get_model_version(
        mlflow_tracking.registered_model_name, version.version
    )
    assert stored.source.startswith("mlflow-artifacts:/") and run_id in stored.source
    assert stored.tags["model_id"] == "ft:gpt-4o-mini:org::abc"


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            data: Any = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                messages.append(data.user_failure_data.description)
            elif data.error is not None:
                messages.append(data.error.message)
    return messages


def test_mlflow_down_at_promotion_fails_clearly_and_the_retry_registers_once(
    mlflow_server: MlflowServer,
    mlflow_tracking: TrackingResource,
    store: PlatformStore,
    config_path: Path,
    state_dir: Path,
    adapter: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not after minutes of backoff
    run_id = logged_run(mlflow_tracking, adapter)
    record_candidate(store, adapter, mlflow_run_id=run_id)
    start_experiment(store)
    store.decide_experiment(
        "exp-1", status="decided", decision="promote", reason="lift above zero", details={"lift": 0.1}
    )
    resources = {**resources_for(config_path, state_dir), "tracking": mlflow_tracking}

    promote = TrackingResource.promote

    def server_dies_then_promote(self: TrackingResource, *args: Any, **kwargs: Any) -> None:
        mlflow_server.stop()  # the version is registered; the alias has not moved yet
        promote(self, *args, **kwargs)

    monkeypatch.setattr(TrackingResource, "promote", server_dies_then_promote)
    try:
        failed = dg.materialize([production_model], partition_key=CYCLE, resources=resources, raise_on_error=False)
    finally:
        monkeypatch.setattr(TrackingResource, "promote", promote)
        mlflow_server.start()  # back on the same port and store, for this test's retry and the tests after it
    assert not failed.success
    [message] = failure_messages(failed)
    assert message.startswith(f"MLflow tracking server at {mlflow_server.url} is unreachable while moving 'champion'")
    assert "retry the run" in message and "Traceback" not in message
    assert store.production_model(default="base") == "base"  # nothing recorded as promoted

    retry = dg.materialize([production_model], partition_key=CYCLE, resources=resources, raise_on_error=False)
    assert retry.success, failure_messages(retry)
    client = MlflowClient(mlflow_server.url, mlflow_server.url)
    name = mlflow_tracking.registered_model_name
    [version] = client.search_model_versions(f"name='{name}'")  # one version: the retry found the first one
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == version.version
    assert store.production_model(default="base") == CANDIDATE
    [event] = retry.get_asset_materialization_events()
    assert event.materialization.metadata["registry_version"].value == version.version


def test_an_unreachable_server_is_a_tracking_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_assets_tests.fixtures.mlflow_server import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{free_port()}"
    tracking = TrackingResource(tracking_uri=url)
    with pytest.raises(TrackingUnavailable, match=f"MLflow tracking server at {url} is unreachable while reading"):
        tracking.champion()
    with pytest.raises(TrackingUnavailable, match="registering ft:x as 'post-writer'"):
        tracking.register(model_id="ft:x", source="ft:x", run_id=None, tags={})
    assert isinstance(TrackingUnavailable("m"), dg.Failure)
