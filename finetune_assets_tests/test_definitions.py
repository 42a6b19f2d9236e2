import itertools
import json
import subprocess
import sys

import dagster as dg

from finetune_assets.definitions import defs

ASSETS = {
    "generated_posts",
    "training_data",
    "fine_tuned_model",
    "evaluation_scores",
    "ab_test",
    "ab_test_outcome",
    "production_model",
}


HEAVY_MODULES = ("torch", "transformers", "trl", "peft", "mlflow", "openai", "tiktoken", "redis")
"""Imported only inside the functions that use them; how long loading takes is `bench/definitions_load.py`'s."""


def test_loading_the_definitions_imports_no_heavy_library() -> None:
    code = (
        "import sys; from finetune_assets.definitions import defs; "
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert heavy == "", f"loading finetune_assets.definitions imported heavy modules: {heavy}"


def test_graph_shape() -> None:
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == ASSETS
    chain = [
        "generated_posts",
        "training_data",
        "fine_tuned_model",
        "evaluation_scores",
        "ab_test",
        "ab_test_outcome",
        "production_model",
    ]
    for upstream, downstream in itertools.pairwise(chain):
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert parents == {upstream}
    assert not graph.get(dg.AssetKey("generated_posts")).is_materializable


def test_checks_are_blocking_on_every_gated_asset() -> None:
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {a for a, _ in checks} == {
        "training_data",
        "fine_tuned_model",
        "evaluation_scores",
        "ab_test_outcome",
    }
    assert {
        ("training_data", "enough_examples"),
        ("training_data", "chat_format"),
        ("training_data", "no_pii"),
        ("training_data", "no_duplicates"),
        ("training_data", "token_limit"),
        ("fine_tuned_model", "job_succeeded"),
        ("fine_tuned_model", "losses_finite"),
        ("evaluation_scores", "candidate_not_worse"),
        ("ab_test_outcome", "no_sample_ratio_mismatch"),
        ("ab_test_outcome", "enough_data"),
    } <= checks
    for asset in ("training_data", "fine_tuned_model", "evaluation_scores", "ab_test_outcome"):
        for spec in defs.resolve_assets_def(asset).check_specs:
            assert spec.blocking, spec.name


def test_schedule_and_sensors() -> None:
    schedule = defs.resolve_schedule_def("weekly_finetune_schedule")
    assert schedule.cron_schedule == "0 2 * * 0"
    assert schedule.job_name == "finetune_cycle_job"
    names = {s.name for s in defs.resolve_all_sensor_defs()} if hasattr(defs, "resolve_all_sensor_defs") else None
    names = names or {s.name for s in defs.sensors or []}
    assert {"training_data_sensor", "ab_test_sensor", "finetune_run_failure_sensor"} <= names


def test_expensive_steps_request_kubernetes_resources() -> None:
    for asset in ("fine_tuned_model", "evaluation_scores"):
        config = json.loads(defs.resolve_assets_def(asset).op.tags["dagster-k8s/config"])
        limits = config["container_config"]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    config = json.loads(defs.resolve_assets_def("training_data").op.tags["dagster-k8s/config"])
    requests = config["container_config"]["resources"]
    assert requests["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert requests["limits"] == {"cpu": "2", "memory": "4Gi"}
