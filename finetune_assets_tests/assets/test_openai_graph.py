"""The production OpenAI path through Dagster, against the local OpenAI-compatible server (the only stand-in):
the real openai SDK over real HTTP, the real SQLite store and MLflow store, the real assets and checks."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import openai
import pytest
from mlflow import MlflowClient

from finetune_assets.assets import evaluation_scores, fine_tuned_model, generated_posts, training_data
from finetune_assets.definitions import defs
from finetune_assets.evaluation.judge import JUDGE_SYSTEM
from finetune_assets.finetuning.dataset import FORMAT_COUNTERS
from finetune_assets.resources.openai import OpenAIResource
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests import fake_openai
from finetune_assets_tests.conftest import resources_for, seed, write_config
from finetune_assets_tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.integration
CYCLE = "2026-11-15"
MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="session")
def mlflow_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, migrated once per session (creating one costs ~8 s of alembic)."""
    path = tmp_path_factory.mktemp("mlflow-schema") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def world(store: PlatformStore, state_dir: Path, mlflow_schema: Path) -> PlatformStore:
    seed(store, n_posts=700, n_users=250)
    shutil.copy(mlflow_schema, state_dir / "mlflow.db")
    return store


@pytest.fixture
def api_key(openai_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The server's key, reaching the resource only as `dg.EnvVar("OPENAI_API_KEY")`, as in production."""
    monkeypatch.setenv("OPENAI_API_KEY", openai_server.api_key)
    yield openai_server.api_key


def config(tmp_path: Path, state_dir: Path, server: FakeOpenAI, **overrides: Any) -> Path:
    client = {
        "base_url": server.base_url,
        "poll_interval_seconds": 0.01,
        "poll_backoff": 1.5,
        "max_poll_interval_seconds": 0.05,
        "max_retries": 6,
        "chat_concurrency": 4,
        "request_timeout_seconds": 30,
        **overrides.pop("openai", {}),
    }
    evaluation = {"max_holdout_examples": 24, "min_holdout_examples": 10, "max_new_tokens": 40}
    return write_config(
        tmp_path / "openai.yaml",
        state_dir,
        backend="openai",
        base_model=MODEL,
        training_data_threshold=20,
        evaluation={**evaluation, **overrides.pop("evaluation", {})},
        openai=client,
        **overrides,
    )


def resources(config_path: Path, state_dir: Path) -> dict[str, object]:
    return {**resources_for(config_path, state_dir), "openai": OpenAIResource(api_key=dg.EnvVar("OPENAI_API_KEY"))}


def materialize(config_path: Path, state_dir: Path, instance: dg.DagsterInstance, *assets: dg.AssetsDefinition):
    return dg.materialize(
        [generated_posts, *assets],
        partition_key=CYCLE,
        resources=resources(config_path, state_dir),
        instance=instance,
        raise_on_error=False,
        selection=[a.key for a in assets],
    )


def metadata_of(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    return {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    return [str(e.message) + str(e.event_specific_data) for e in result.all_events if e.is_failure]


def judging_responder(server: FakeOpenAI):
    """The server's own answers, except for the judge's prompt: the longer post wins (a stand-in preference)."""

    def respond(model: str, messages: list[dict[str, Any]]) -> str:
        if messages[0]["content"] == JUDGE_SYSTEM:
            text = messages[1]["content"]
            a, b = text.split("\n\nPost A:\n")[1].split("\n\nPost B:\n")
            return "A" if len(a) >= len(b) else "B"
        pairs = server._chat_model_pairs(model)
        rng = fake_openai._seeded_rng(model, messages, None, 0)
        return (
            fake_openai._fine_tuned_answer(pairs, messages, rng) if pairs else fake_openai._base_answer(messages, rng)
        )

    return respond


def test_the_cycle_runs_on_the_openai_backend_and_the_key_never_leaks(
    tmp_path: Path,
    state_dir: Path,
    world: PlatformStore,
    instance: dg.DagsterInstance,
    openai_server: FakeOpenAI,
    api_key: str,
) -> None:
    openai_server.chat_responder = judging_responder(openai_server)
    openai_server.chat_latency_s = 0.01  # calls overlap, so the concurrency limit is visible
    path = config(tmp_path, state_dir, openai_server, evaluation={"judge_model": MODEL})
    result = defs.resolve_job_def("finetune_cycle_job").execute_in_process(
        instance=instance, partition_key=CYCLE, resources=resources(path, state_dir), raise_on_error=False
    )
    assert result.success, failures(result)
    assets = metadata_of(result)
    assert set(assets) == {"training_data", "fine_tuned_model", "evaluation_scores", "ab_test"}
    checks = checks_of(result)
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items() if not c.passed}

    # The blocking format check reports the cookbook's seven counters; the cost gate its estimate.
    chat_format = {k: v.value for k, v in checks["chat_format"].metadata.items()}
    assert {name: chat_format[name] for name in FORMAT_COUNTERS} == dict.fromkeys(FORMAT_COUNTERS, 0)
    cost = {k: v.value for k, v in checks["cost_within_budget"].metadata.items()}
    assert cost["token_count_encoding"] == "cl100k_base (approximate for o200k_base models)"
    assert 0 < cost["estimated_cost_usd"] <= cost["max_cost_usd"]
    assert cost["n_epochs"] == 3 and cost["n_examples"] == assets["training_data"]["n_train"]

    # One job with the metadata key, the method's hyperparameters, suffix and seed; two files, purpose fine-tune.
    [job] = openai_server.jobs.values()
    assert job["status"] == "succeeded" and job["model"] == MODEL
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 3
    assert job["fine_tuned_model"].startswith(f"ft:{MODEL}:fake-org:cycle-{CYCLE}:") and job["seed"] == 0
    assert {"finetune_job_key", "training_file_sha256", "partition", "config_hash", "dataset_hash"} <= set(
        job["metadata"]
    )
    assert job["metadata"]["partition"] == CYCLE
    uploads = openai_server.uploads
    assert len(uploads) == 2 and {u["purpose"] for u in uploads} == {"fine-tune"}
    assert job["metadata"]["training_file_sha256"] in {u["sha256"] for u in uploads}

    tuned = assets["fine_tuned_model"]
    assert tuned["status"] == "succeeded" and tuned["model_id"] == job["fine_tuned_model"]
    assert tuned["model_id"].startswith(f"ft:{MODEL}:")
    assert tuned["trained_tokens"] == job["trained_tokens"] > 0
    assert tuned["cost_usd"] == pytest.approx(job["trained_tokens"] * 3.0 / 1e6)
    assert tuned["final_train_loss"] > 0  # from the (base64-encoded) results CSV

    # Evaluation through chat completions, concurrency-limited; no held-out loss, and it says so.
    scores = assets["evaluation_scores"]
    assert scores["heldout_loss_available"] is False and scores["candidate_heldout_loss"] is None
    not_worse = {k: v.value for k, v in checks["candidate_not_worse"].metadata.items()}
    assert not_worse["heldout_loss_compared"] is False
    assert "predicted engagement only" in (checks["candidate_not_worse"].description or "")
    assert 1 < openai_server.max_concurrent_chat <= 4
    assert scores["judge_model"] == MODEL and scores["judge_pairs"] == scores["n_holdout"]
    assert scores["judge_api_calls"] + scores["judge_identical_outputs"] == scores["n_holdout"]
    positions = {v["candidate_position"] for v in scores["judge_verdicts"] if v["candidate_position"]}
    assert positions == {"A", "B"}, "answer order is randomized and recorded"

    # The key appears in no log line, no metadata, no MLflow param or tag.
    logged = [str(e.message) + str(e.dagster_event) for e in instance.all_logs(result.run_id)]
    assert logged and not [line for line in logged if api_key in line]
    assert api_key not in repr(assets) and api_key not in repr({n: c.metadata for n, c in checks.items()})
    client = MlflowClient(tracking_uri=f"sqlite:///{state_dir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs
    for run in runs:
        assert api_key not in repr(run.data.params) + repr(run.data.tags)
    [tuning_run] = [run for run in runs if "hp_n_epochs" in run.data.params]
    assert tuning_run.data.params["hp_n_epochs"] == "auto" and tuning_run.data.metrics["cost_usd"] > 0
    curve = client.get_metric_history(tuning_run.info.run_id, "train_loss")
    assert len(curve) > 10 and curve[-1].value == pytest.approx(tuned["final_train_loss"])


def test_a_run_killed_after_job_creation_reattaches_instead_of_paying_twice(
    tmp_path: Path,
    state_dir: Path,
    world: PlatformStore,
    instance: dg.DagsterInstance,
    openai_server: FakeOpenAI,
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = config(tmp_path, state_dir, openai_server)
    assert materialize(path, state_dir, instance, training_data).success

    real_create = openai.resources.fine_tuning.jobs.Jobs.create

    def create_then_die(self: Any, **kwargs: Any) -> Any:
        real_create(self, **kwargs)
        raise SystemExit("worker killed right after jobs.create returned")

    with monkeypatch.context() as patch:
        patch.setattr(openai.resources.fine_tuning.jobs.Jobs, "create", create_then_die)
        killed = materialize(path, state_dir, instance, fine_tuned_model)
    assert not killed.success and len(openai_server.jobs) == 1

    rerun = materialize(path, state_dir, instance, fine_tuned_model)
    assert rerun.success, failures(rerun)
    [job_id] = openai_server.jobs
    assert metadata_of(rerun)["fine_tuned_model"]["job_id"] == job_id
    posts = [r for r in openai_server.requests if r[0] == "POST"]
    assert sum(1 for r in posts if r[1].endswith("/fine_tuning/jobs")) == 1, "exactly one job"
    shas = [u["sha256"] for u in openai_server.uploads]
    assert len(shas) == len(set(shas)) == 2, "one upload per file"
    logs = " ".join(str(e.message) for e in instance.all_logs(rerun.run_id))
    assert f"re-attached to fine-tuning job {job_id}" in logs

    # A third run, with a new job key (new config), reuses both uploaded files by content hash.
    other = config(tmp_path, state_dir, openai_server, openai={"hyperparameters": {"n_epochs": 2}})
    again = materialize(other, state_dir, instance, fine_tuned_model)
    assert again.success, failures(again)
    assert len(openai_server.jobs) == 2 and len(openai_server.uploads) == 2


def test_the_run_completes_when_a_fifth_of_requests_fail_with_429_or_5xx(
    tmp_path: Path,
    state_dir: Path,
    world: PlatformStore,
    instance: dg.DagsterInstance,
    openai_server: FakeOpenAI,
    api_key: str,
) -> None:
    path = config(tmp_path, state_dir, openai_server, evaluation={"max_holdout_examples": 10})
    openai_server.set_faults(0.2, seed=7)
    result = materialize(path, state_dir, instance, training_data, fine_tuned_model, evaluation_scores)
    assert result.success, failures(result)
    statuses = [status for _, _, status in openai_server.requests]
    assert sum(1 for s in statuses if s == 429) > 0 and sum(1 for s in statuses if s >= 500) > 0
    assert len(openai_server.jobs) == 1 and len(openai_server.uploads) == 2


def test_a_failed_job_fails_the_asset_with_code_message_and_param_and_nothing_downstream_runs(
    tmp_path: Path,
    state_dir: Path,
    world: PlatformStore,
    instance: dg.DagsterInstance,
    openai_server: FakeOpenAI,
    api_key: str,
) -> None:
    openai_server.fail_next_job("invalid_training_file", "The file has 3 malformed lines.", "training_file")
    path = config(tmp_path, state_dir, openai_server)
    result = defs.resolve_job_def("finetune_cycle_job").execute_in_process(
        instance=instance, partition_key=CYCLE, resources=resources(path, state_dir), raise_on_error=False
    )
    assert not result.success
    assert set(metadata_of(result)) == {"training_data"}
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failure.step_key == "fine_tuned_model"
    text = str(failure.event_specific_data)
    assert "invalid_training_file: The file has 3 malformed lines. (param: training_file)" in text
    assert "Traceback" not in str(failure.event_specific_data.error.message)  # type: ignore[union-attr]
    started = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START}
    assert started == {"training_data", "fine_tuned_model"}
    assert openai_server.chat_calls == 0


def test_the_cost_gate_refuses_an_over_budget_file_before_anything_is_uploaded(
    tmp_path: Path,
    state_dir: Path,
    world: PlatformStore,
    instance: dg.DagsterInstance,
    openai_server: FakeOpenAI,
    api_key: str,
) -> None:
    path = config(tmp_path, state_dir, openai_server, openai={"max_cost_usd": 0.0001})
    result = materialize(path, state_dir, instance, training_data, fine_tuned_model)
    assert not result.success
    gate = checks_of(result)["cost_within_budget"]
    assert gate.passed is False
    assert "refused, nothing is uploaded" in (gate.description or "")
    assert {k: v.value for k, v in gate.metadata.items()}["estimated_cost_usd"] > 0.0001
    assert set(metadata_of(result)) == {"training_data"}
    assert openai_server.uploads == [] and not [r for r in openai_server.requests if "/files" in r[1]]
    assert openai_server.jobs == {}
