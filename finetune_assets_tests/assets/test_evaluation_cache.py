"""`evaluation_scores` through the cache, on a real (small) fine-tuned candidate and the real Redis.

A rerun on the same candidate loads no model, fits no predictor and generates nothing; Redis stopped in the
middle of an evaluation, or down from its start, costs one warning and the run completes uncached with the
same scores. One candidate is trained per module (~10 s); each evaluation that misses takes a few seconds.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from finetune_assets.assets import evaluation_scores, fine_tuned_model, training_data
from finetune_assets.evaluation import predictor as predictor_module
from finetune_assets.evaluation.scoring import LazyModel
from finetune_assets.finetuning.demo_base_model import DEMO_BASE_MODEL
from finetune_assets.finetuning.local_backend import LocalBackend
from finetune_assets.resources.cache import RedisResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.simulation import generate_corpus
from finetune_assets_tests.conftest import NOW, resources_for, write_config
from finetune_assets_tests.demo_world import WORLD
from finetune_assets_tests.fixtures.mlflow_server import free_port
from finetune_assets_tests.fixtures.services import PrivateRedis

CYCLE = "2026-11-15"
TINY = {
    "training_data_threshold": 50,
    "training": {"n_epochs": 1, "learning_rate": 0.003, "batch_size": 16, "max_seq_len": 96},
    "evaluation": {"max_holdout_examples": 16, "min_holdout_examples": 10, "max_new_tokens": 24},
}
SCORES = (
    "candidate_heldout_loss",
    "champion_heldout_loss",
    "candidate_predicted_engagement",
    "champion_predicted_engagement",
    "candidate_samples",
    "champion_samples",
)


@dataclass
class Trained:
    config: Path
    state_dir: Path
    instance: dg.DagsterInstance
    reference: dict[str, Any]  # the first evaluation's metadata (in-process cache, all misses)

    def evaluate(self, redis: RedisResource) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [evaluation_scores],
            partition_key=CYCLE,
            resources={**resources_for(self.config, self.state_dir), "redis": redis},
            instance=self.instance,
            raise_on_error=False,
        )


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["evaluation_scores"]]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def cache_warnings(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    return [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if e.level >= logging.WARNING and "continuing without cache" in e.user_message
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_base_model: Path) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("evaluation_cache")
    state_dir = root / "state"
    state_dir.mkdir()
    shutil.copytree(demo_base_model, state_dir / "base_models" / DEMO_BASE_MODEL)
    store = StoreResource(state_dir=str(state_dir)).get()
    store.create_posts_table()
    store.insert_posts(generate_corpus(WORLD, now=NOW))
    config = write_config(root / "c.yaml", state_dir, **TINY)
    with dg.instance_for_test() as instance:
        trained = dg.materialize(
            [training_data, fine_tuned_model],
            partition_key=CYCLE,
            resources=resources_for(config, state_dir),
            instance=instance,
        )
        assert trained.success
        world = Trained(config, state_dir, instance, {})
        first = world.evaluate(RedisResource())  # the embedded default: the in-process cache
        assert first.success, [e.message for e in first.all_events if e.is_failure]
        world.reference = metadata(first)
        yield world


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts model loads and predictor fits: what a cached evaluation must not do."""
    counts = {"load": 0, "fit": 0}
    load, fit = LocalBackend.load, predictor_module.fit_predictor

    def counting_load(self: LocalBackend, model_id: str) -> Any:
        counts["load"] += 1
        return load(self, model_id)

    def counting_fit(*args: Any, **kwargs: Any) -> Any:
        counts["fit"] += 1
        return fit(*args, **kwargs)

    monkeypatch.setattr(LocalBackend, "load", counting_load)
    monkeypatch.setattr(predictor_module, "fit_predictor", counting_fit)
    return counts


def test_the_first_evaluation_misses_everything(trained: Trained) -> None:
    first = trained.reference
    n = first["n_holdout"]
    assert first["cache"] == "in-process"
    assert first["cache_by_kind"]["generation"] == {"hits": 0, "misses": 2 * n}
    assert first["cache_by_kind"]["heldout_loss"] == {"hits": 0, "misses": 2}
    assert first["cache_misses"] >= 4 * n + 2


@pytest.mark.integration
def test_a_rerun_on_the_same_candidate_generates_and_scores_nothing(
    trained: Trained, redis_resource: RedisResource, calls: dict[str, int]
) -> None:
    first = trained.evaluate(redis_resource)
    assert first.success
    cold = metadata(first)
    assert cold["cache"] == "redis" and cold["cache_misses"] > 0
    assert calls["load"] == 2 and calls["fit"] == 1
    assert {k: cold[k] for k in SCORES} == {k: trained.reference[k] for k in SCORES}

    rerun = trained.evaluate(redis_resource)
    assert rerun.success
    warm = metadata(rerun)
    assert warm["cache_misses"] == 0
    assert warm["cache_hits"] == cold["cache_hits"] + cold["cache_misses"]
    assert all(kind["misses"] == 0 for kind in warm["cache_by_kind"].values())
    assert (calls["load"], calls["fit"]) == (2, 1)  # no model loaded, no predictor fitted on the rerun
    assert {k: warm[k] for k in SCORES} == {k: cold[k] for k in SCORES}

    client = redis_resource.client()
    assert client is not None
    keys = [k.decode() for k in client.scan_iter(match=f"{redis_resource.key_prefix}:eval:*")]
    assert 0 < len(keys) <= cold["cache_misses"]  # one per miss, unless two misses had the same parts
    assert {k.split(":")[-2] for k in keys} == {"generation", "heldout_loss", "predicted_engagement"}
    ttl = round(warm["cache_ttl_hours"] * 3600)
    assert all(ttl - 60 < client.ttl(key) <= ttl for key in keys)


@pytest.mark.integration
def test_redis_stopped_mid_evaluation_completes_uncached(
    trained: Trained, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate = LazyModel.generate

    def stop_redis_then_generate(self: LazyModel, *args: Any, **kwargs: Any) -> list[str]:
        private_redis.stop()  # after the candidate's lookups, before its writes: the rest of the run has no Redis
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(LazyModel, "generate", stop_redis_then_generate)
    resource = RedisResource(url=private_redis.url, key_prefix="finetune-assets-test:fault")
    result = trained.evaluate(resource)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = metadata(result)
    assert "failed mid-run" in meta["cache"] and "continued uncached" in meta["cache"]
    assert meta["cache_hits"] == 0
    assert {k: meta[k] for k in SCORES} == {k: trained.reference[k] for k in SCORES}
    warnings = cache_warnings(trained.instance, result)
    assert len(warnings) == 1 and "continuing without cache" in warnings[0], warnings
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True]

    # Down from the start (nothing listens on its port now): one warning, the run completes uncached.
    monkeypatch.setattr(LazyModel, "generate", generate)
    down = trained.evaluate(RedisResource(url=f"redis://127.0.0.1:{free_port()}/0"))
    assert down.success
    assert metadata(down)["cache"] == "off (Redis unreachable)"
    [warning] = cache_warnings(trained.instance, down)
    assert "unreachable" in warning and "continuing without cache" in warning
