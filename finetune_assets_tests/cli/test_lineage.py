"""`finetune-assets lineage` as a person runs it: the installed command, in a shell pointed at the Dagster
instance, store and MLflow registry of a demo cycle (demo_world.py)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from finetune_assets.resources.store import StoreResource
from finetune_assets_tests.conftest import write_config

pytestmark = pytest.mark.slow
COMMAND = str(Path(sys.executable).parent / "finetune-assets")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, env=env, timeout=180, check=False)


def lineage_json(demo, *args: str) -> dict:
    result = cli(demo.env(), "lineage", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_lineage_of_the_production_model_prints_the_chain_back_to_the_posts(demo_instance) -> None:
    assert demo_instance.promoted, "the test world's candidate wins its A/B test by a wide margin"
    result = cli(demo_instance.env(), "lineage")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout
    store = StoreResource(state_dir=str(demo_instance.state_dir)).get()
    dataset = store.get_dataset(demo_instance.dataset_id)
    model = store.get_model(demo_instance.model_id)
    assert dataset is not None and model is not None
    assert out.startswith(f"{demo_instance.model_id}  [IN PRODUCTION]")
    for expected in (
        "registry post-writer v1 (champion), replaced demo-tiny-gpt2",
        "ab_decision promote, ab_lift +",
        "PROMOTE: lift +",
        f"{demo_instance.experiment_id} vs demo-tiny-gpt2, split 50%",
        "held-out loss",
        "passed on",
        f"job {model.job_id} (local backend, base demo-tiny-gpt2): succeeded",
        f"partition {demo_instance.partition}, dataset {demo_instance.dataset_id} (trained)",
        f"hash {dataset.dataset_hash}",
        f"{dataset.n_train} posts trained on, {dataset.n_holdout} held out, {dataset.n_rejected} rejected",
        f"list the posts:  finetune-assets posts {demo_instance.dataset_id}",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    # every asset of the chain names the Dagster run that materialized it
    chain = ["production_model", "ab_test_outcome", "ab_test", "evaluation_scores", "fine_tuned_model", "training_data"]
    with dg.DagsterInstance.from_config(str(demo_instance.home)) as instance:
        for asset in chain:
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None
            block = re.split(rf"^{asset} ", out, maxsplit=1, flags=re.M)[1].split("↳ ", 1)[1]
            assert block.startswith(f"run {event.run_id.split('-')[0]}, "), (asset, block[:80])


def test_lineage_json_agrees_with_the_instance_the_registry_and_the_posts_verb(demo_instance) -> None:
    data = lineage_json(demo_instance)
    assert data["model_id"] == demo_instance.model_id and data["in_production"] is True
    client = MlflowClient(tracking_uri=f"sqlite:///{demo_instance.state_dir / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("post-writer", "champion")
    assert data["registry"]["version"] == str(champion.version) and "champion" in data["registry"]["aliases"]
    for tag in ("partition", "dataset_hash", "dataset_id", "job_id", "ab_decision", "ab_lift"):
        assert data["registry"]["tags"][tag] == champion.tags[tag], tag
    assert data["training_data"]["dataset_hash"] == champion.tags["dataset_hash"]
    assert data["fine_tune"]["job_id"] == champion.tags["job_id"]
    with dg.DagsterInstance.from_config(str(demo_instance.home)) as instance:
        for asset, link in data["dagster"].items():
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None and link["run_id"] == event.run_id, asset
            assert link["partition"] == demo_instance.partition
    trained = data["dagster"]["training_data"]["metadata"]
    assert trained["dataset_id"] == demo_instance.dataset_id and trained["n_train"] == data["training_data"]["n_train"]
    # where to list the posts: the printed command lists exactly the posts the model trained on
    command = data["posts"]["list_command"].split()
    assert command[:2] == ["finetune-assets", "posts"]
    listed = cli(demo_instance.env(), *command[1:], "--role", "train")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == data["training_data"]["n_train"] > 0


def test_a_named_model_by_id_registry_version_or_alias(demo_instance) -> None:
    by_id = lineage_json(demo_instance, demo_instance.model_id)
    by_version = lineage_json(demo_instance, "v1")
    by_alias = lineage_json(demo_instance, "champion")
    for data in (by_id, by_version, by_alias):
        assert data["model_id"] == demo_instance.model_id
        assert data["training_data"]["dataset_id"] == demo_instance.dataset_id
        assert data["experiment"]["experiment_id"] == demo_instance.experiment_id


def test_an_unknown_model_is_one_clear_line_and_a_non_zero_exit(demo_instance) -> None:
    result = cli(demo_instance.env(), "lineage", "ft:no-such-model")
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "finetune-assets: model 'ft:no-such-model' not found: expected a fine-tuned model id"
    )
    assert demo_instance.model_id in result.stderr  # it names the models that do exist
    assert cli(demo_instance.env(), "lineage", "v7").returncode != 0  # no such registry version either


def test_without_a_dagster_instance_it_says_where_it_looked(demo_instance, tmp_path: Path) -> None:
    env = {**demo_instance.env(), "DAGSTER_HOME": str(tmp_path / "nowhere")}
    for verb in ("lineage", "status"):
        result = cli(env, verb)
        assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
        assert f"no Dagster instance at {tmp_path / 'nowhere'} (DAGSTER_HOME): run `make demo` first" in result.stderr
    assert not (tmp_path / "nowhere").exists()  # reading never creates an instance


def test_before_any_promotion_the_production_model_is_the_base_model(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    state = tmp_path / "state"
    config = write_config(tmp_path / "c.yaml", state)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MLFLOW_TRACKING_URI")}
    env.update({"DAGSTER_HOME": str(home), "FINETUNE_CONFIG": str(config), "FINETUNE_STATE_DIR": str(state)})
    result = cli(env, "lineage")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("demo-tiny-gpt2\n  demo-tiny-gpt2 is the configured base model")
    assert "no candidate has been promoted yet" in result.stdout
    assert result.stderr == ""  # not even Dagster's "no dagster.yaml" warning
    assert not (state / "mlflow.db").exists()  # no registry was created just to read it
    status = cli(env, "status")  # before the app's table exists: it says so instead of failing
    assert status.returncode == 0, status.stderr
    assert re.search(r"Waiting examples\s+no posts table in this database yet", status.stdout)
    assert re.search(r"Last training\s+no model trained yet", status.stdout)
