"""training_data through Dagster: exactly-once ledger, reasons counted, blocking gate stops the fine-tune."""

from pathlib import Path

import dagster as dg

from finetune_assets.assets import fine_tuned_model, generated_posts, training_data
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests.conftest import resources_for, seed, write_config

CYCLE, NEXT_CYCLE = "2026-11-15", "2026-11-08"


def collect(config: Path, state_dir: Path, instance: dg.DagsterInstance, partition: str = CYCLE, assets=None):
    return dg.materialize(
        assets or [generated_posts, training_data],
        partition_key=partition,
        resources=resources_for(config, state_dir),
        instance=instance,
        raise_on_error=False,
        selection=[a.key for a in (assets or [training_data]) if isinstance(a, dg.AssetsDefinition)],
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    event = result.get_asset_materialization_events()[0]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_collection_counts_bad_rows_and_is_exactly_once(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    seed(store, n_posts=800)
    config = write_config(tmp_path / "c.yaml", state_dir, training_data_threshold=20)
    first = collect(config, state_dir, instance)
    assert first.success
    assert all(checks_of(first).values())
    meta = metadata(first)
    assert meta["n_train"] >= 20 and meta["n_holdout"] > 0
    assert sum(meta["rejected_by_reason"].values()) == meta["n_rejected"]
    ledger = store.ledger_posts(meta["dataset_id"])
    assert len(ledger) == meta["n_train"] + meta["n_holdout"] + meta["n_rejected"]
    assert store.count_qualifying(100, 0.06)[0] == 0

    # Another cycle finds nothing new: no post is used twice, and its gate says why.
    second = collect(config, state_dir, instance, partition=NEXT_CYCLE)
    assert not second.success
    assert checks_of(second)["enough_examples"] is False
    assert metadata(second)["n_train"] == 0

    # Rematerializing the same cycle supersedes its untrained dataset and rebuilds the same one.
    again = collect(config, state_dir, instance)
    assert again.success
    assert metadata(again)["dataset_hash"] == meta["dataset_hash"]
    superseded = store.get_dataset(meta["dataset_id"])
    assert superseded is not None and superseded.status == "superseded"


def test_too_few_examples_blocks_the_fine_tune_and_releases_posts(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    seed(store, n_posts=400)
    waiting = store.count_qualifying(100, 0.06)[0]
    config = write_config(tmp_path / "c.yaml", state_dir, training_data_threshold=1000)
    result = dg.materialize(
        [generated_posts, training_data, fine_tuned_model],
        partition_key=CYCLE,
        resources=resources_for(config, state_dir),
        instance=instance,
        raise_on_error=False,
        selection=[training_data.key, fine_tuned_model.key],
    )
    assert not result.success
    evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluation["enough_examples"].passed is False
    description = evaluation["enough_examples"].description or ""
    assert "training_data_threshold is 1000" in description
    assert [e.asset_key.path[-1] for e in result.get_asset_materialization_events()] == ["training_data"]
    assert not (state_dir / "jobs").exists(), "no fine-tune may start"
    assert store.latest_dataset(CYCLE, statuses=("rejected",)) is not None
    assert store.count_qualifying(100, 0.06)[0] == waiting, "a rejected dataset gives its posts back"
