"""A small demo world materialized once into an on-disk Dagster instance, for the tests that look at it the way
a person does: the CLI verbs (`lineage`, `status`) and the browser tests against a real `dagster-webserver`.

It runs the whole loop like `finetune-assets demo` does (cycle job, simulated A/B traffic, sensor, decision
job), only smaller, then adds a new week's organic posts so that qualifying examples wait for the next cycle.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from finetune_assets.cli.demo import QUIET_RUN_CONFIG, simulate_ab_traffic
from finetune_assets.finetuning import make_backend
from finetune_assets.finetuning.dataset import parse_prompt
from finetune_assets.finetuning.demo_base_model import (
    DEMO_BASE_MODEL,
    ensure_demo_base_model,
    format_chat_for_pretraining,
)
from finetune_assets.reporting.progress import to_terminal
from finetune_assets.resources.store import StoreResource
from finetune_assets.sensors import ab_test_sensor
from finetune_assets.settings import load_settings
from finetune_assets.simulation import DemoWorldConfig, generate_corpus
from finetune_assets_tests.conftest import NOW, resources_for, write_config

REPO = Path(__file__).resolve().parent.parent
WORLD = DemoWorldConfig(seed=11, n_users=600, n_posts=1500)
NEXT_WEEK = DemoWorldConfig(seed=12, n_users=600, n_posts=400, history_days=5)
CYCLE = "2026-11-15"
SMALL = {
    "training_data_threshold": 50,
    "training": {"n_epochs": 3, "learning_rate": 0.003, "batch_size": 16, "max_seq_len": 128},
    "evaluation": {"max_holdout_examples": 40, "min_holdout_examples": 10, "max_new_tokens": 64},
    "experiment": {"min_users_per_arm": 30, "guardrail_margin": 0.5},  # the demo's scale (demo.DEMO_SCALE_OVERRIDES)
}
"""Small enough for a test, strong enough that the candidate wins its A/B test by a wide margin (+43 %, CI
[+22 %, +65 %] on the development machine) whatever the experiment's random salt."""


def build_base_model(target: Path) -> Path:
    """The demo base model, pretrained briefly on WORLD's posts that never qualify (as the demo does)."""
    texts = []
    for row in generate_corpus(WORLD, now=NOW):
        prompt = parse_prompt(row["prompt_messages"])
        qualifies = row["impressions"] >= 100 and row["engagements"] >= 0.06 * row["impressions"]
        if isinstance(prompt, list) and row["completion"] and not qualifies:
            texts.append(format_chat_for_pretraining([*prompt, {"role": "assistant", "content": row["completion"]}]))
    # Epoch-bound, not time-bound: the same model on a busy machine as on an idle one (about 25 s on 2 cores).
    return ensure_demo_base_model(texts, target / DEMO_BASE_MODEL, pretrain_seconds=900, max_epochs=2)


@dataclass(frozen=True)
class DemoInstance:
    """A Dagster home, a state directory (SQL store, MLflow, adapters) and the config that ties them."""

    root: Path
    home: Path
    state_dir: Path
    config: Path
    partition: str
    model_id: str
    dataset_id: str
    experiment_id: str
    promoted: bool
    progress_lines: tuple[str, ...] = ()
    """What `finetune-assets demo` would have printed from inside the cycle run (finetune_assets.reporting.progress)."""

    def env(self) -> dict[str, str]:
        """The environment a person's shell has after `make demo`, pointed at this instance."""
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MLFLOW_TRACKING_URI")}
        env.update(
            {
                "DAGSTER_HOME": str(self.home),
                "FINETUNE_CONFIG": str(self.config),
                "FINETUNE_STATE_DIR": str(self.state_dir),
            }
        )
        return env

    def copy_to(self, root: Path, **config_overrides: object) -> DemoInstance:
        """An independent copy (the instance's and the store's files), for a test that changes things."""
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.home, root / "home")
        shutil.copytree(self.state_dir, root / "state")
        config = write_config(root / "pipeline_config.yaml", root / "state", **{**SMALL, **config_overrides})
        return DemoInstance(
            root=root,
            home=root / "home",
            state_dir=root / "state",
            config=config,
            partition=self.partition,
            model_id=self.model_id,
            dataset_id=self.dataset_id,
            experiment_id=self.experiment_id,
            promoted=self.promoted,
            progress_lines=self.progress_lines,
        )


def materialize_demo_world(root: Path, base_model: Path, **config_overrides: object) -> DemoInstance:
    """Seed, run the whole graph in an on-disk instance, then add next week's posts. About a minute on 2 cores."""
    home, state_dir = root / "home", root / "state"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    state_dir.mkdir()
    shutil.copytree(base_model, state_dir / "base_models" / DEMO_BASE_MODEL)
    config = write_config(root / "pipeline_config.yaml", state_dir, **{**SMALL, **config_overrides})
    settings = load_settings(config)
    store = StoreResource(state_dir=str(state_dir)).get()
    store.create_posts_table()
    store.insert_posts(generate_corpus(WORLD, now=NOW))

    from finetune_assets.definitions import defs

    with dg.DagsterInstance.from_config(str(home)) as instance:

        def run(job: str, now=NOW) -> dg.ExecuteInProcessResult:
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance,
                partition_key=CYCLE,
                resources=resources_for(config, state_dir, now),
                raise_on_error=False,
                run_config=QUIET_RUN_CONFIG,  # as the demo runs it: only the progress lines reach the terminal
            )
            assert result.success, [e.message for e in result.all_events if e.is_failure]
            return result

        terminal = io.StringIO()
        with to_terminal(terminal):
            cycle = run("finetune_cycle_job")
        experiment = store.running_experiment()
        assert experiment is not None
        backend = make_backend("local", state_dir)
        simulate_ab_traffic(store, backend, settings, experiment, WORLD, progress=lambda _line: None)
        tick = ab_test_sensor(
            dg.build_sensor_context(instance=instance, resources=resources_for(config, state_dir, experiment.ends_at))
        )
        assert isinstance(tick, dg.RunRequest), tick
        run("ab_test_decision_job", now=experiment.ends_at)
    materialized = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in cycle.get_asset_materialization_events()
    }
    decided = store.get_experiment(experiment.experiment_id)
    assert decided is not None
    store.insert_posts(generate_corpus(NEXT_WEEK, now=NOW, first_post_id=store.max_post_id() + 1))
    return DemoInstance(
        root=root,
        home=home,
        state_dir=state_dir,
        config=config,
        partition=CYCLE,
        model_id=str(materialized["fine_tuned_model"]["model_id"].value),
        dataset_id=str(materialized["training_data"]["dataset_id"].value),
        experiment_id=str(experiment.experiment_id),
        promoted=decided.decision == "promote",
        progress_lines=tuple(terminal.getvalue().splitlines()),
    )
