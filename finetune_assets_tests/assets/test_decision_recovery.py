"""Decisions that finish: a decision or promotion run that loses its Postgres connection at any step is retried
by ab_test_sensor under a new run key, and the retry completes it exactly once (one decision, one promotion row,
the MLflow alias and the routing agreeing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from finetune_assets.assets import ab_test, ab_test_outcome, production_model
from finetune_assets.jobs import ab_test_decision_job
from finetune_assets.resources.store import StoreResource
from finetune_assets.sensors import EXPERIMENT_TAG, MAX_DECISION_ATTEMPTS, ab_test_sensor
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests.assets.test_experiment import add_traffic
from finetune_assets_tests.conftest import NOW, record_candidate, resources_for, start_experiment, write_config

pytestmark = pytest.mark.integration

CYCLE = "2026-11-15"
CANDIDATE = "ft:cand"
AFTER_WINDOW = NOW + timedelta(hours=1)
WIDE_GUARDRAILS = {"experiment": {"guardrail_margin": 0.10}}
"""This simulated world's impressions per user vary by ~5 % between arms: a 10 % margin keeps the decision a win."""
PRODUCTION = "demo-tiny-gpt2"
"""The configured base model: what serves before any promotion."""


def prepare(store: PlatformStore, adapter: Path) -> None:
    """A cycle whose experiment window has just closed with a clearly better candidate (SIMULATED traffic)."""
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    record_candidate(store, adapter)
    experiment = start_experiment(store, ends_in_hours=0)
    add_traffic(store, experiment, NOW, multiplier=1.6)


@contextmanager
def backend_killed_on(engine: sa.Engine, matches: Callable[[str], bool]) -> Iterator[list[int]]:
    """Terminate the backend of the first statement that `matches`, from a second connection, just before it runs:
    what an operator's `pg_terminate_backend` or a failover does to a step in flight."""
    killer = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT")
    kills: list[int] = []

    def kill(conn: sa.Connection, cursor: Any, statement: str, *_: Any) -> None:
        if kills or not matches(" ".join(statement.split())):
            return
        pid = conn.connection.dbapi_connection.get_backend_pid()  # type: ignore[union-attr]
        with killer.connect() as other:
            assert other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        kills.append(pid)

    sa.event.listen(engine, "before_cursor_execute", kill)
    try:
        yield kills
    finally:
        sa.event.remove(engine, "before_cursor_execute", kill)
        killer.dispose()


def decision_job(resources: dict[str, object]) -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=[ab_test, ab_test_outcome, production_model], jobs=[ab_test_decision_job], resources=resources
    )
    return defs.resolve_job_def(ab_test_decision_job.name)


def launch(
    request: dg.RunRequest, resources: dict[str, object], instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """What the daemon does with the sensor's request: a run of the decision job with its tags and selection."""
    return decision_job(resources).execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        asset_selection=request.asset_selection,
        raise_on_error=False,
    )


def tick(resources: dict[str, object], instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason:
    result = ab_test_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(result, dg.RunRequest | dg.SkipReason)
    return result


def step_failure(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.event_specific_data.error)  # type: ignore[union-attr]


KILL_POINTS = {
    "summing the arms": lambda s: s.startswith("SELECT") and "GROUP BY" in s and "variant" in s,
    "recording the decision": lambda s: s.startswith("UPDATE ft_experiments") and "decision" in s,
    "reading the candidate's model record": lambda s: s.startswith("SELECT") and "FROM ft_models" in s,
    "writing the routing row after the alias moved": lambda s: (
        "ft_promotions" in s and (s.startswith("UPDATE") or s.startswith("INSERT"))
    ),
}


@pytest.mark.parametrize("step", list(KILL_POINTS))
def test_a_killed_connection_at_any_step_is_retried_to_one_complete_promotion(
    step: str,
    pg_store: PlatformStore,
    postgres_url: str,
    tmp_path: Path,
    state_dir: Path,
    instance: dg.DagsterInstance,
) -> None:
    prepare(pg_store, tmp_path / "adapter")
    config = write_config(tmp_path / "c.yaml", state_dir, **WIDE_GUARDRAILS)
    resources = {**resources_for(config, state_dir, AFTER_WINDOW), "store": StoreResource(database_url=postgres_url)}

    first = tick(resources, instance)
    assert isinstance(first, dg.RunRequest) and first.run_key == "exp-1", first
    run_store = resources["store"].get()  # type: ignore[attr-defined]  # the engine the run uses
    with backend_killed_on(run_store.engine, KILL_POINTS[step]) as kills:
        failed = launch(first, resources, instance)
    assert kills and not failed.success
    message = step_failure(failed)
    assert "the database connection was lost" in message and "ab_test_sensor retries this step" in message
    assert "Traceback" not in message

    retry = tick(resources, instance)
    assert isinstance(retry, dg.RunRequest), retry
    assert retry.run_key == "exp-1:attempt-2" and retry.tags[EXPERIMENT_TAG] == "exp-1"
    promotion_steps = ("reading the candidate's model record", "writing the routing row after the alias moved")
    resumed_promotion = step in promotion_steps
    assert retry.asset_selection == ([production_model.key] if resumed_promotion else None)
    assert launch(retry, resources, instance).success

    experiment = pg_store.get_experiment("exp-1")
    assert experiment is not None and experiment.status == "decided" and experiment.decision == "promote"
    promotion = pg_store.promotion_of("exp-1")
    assert promotion is not None and promotion.promoted and promotion.previous_model_id == PRODUCTION
    assert pg_store.production_model(default=PRODUCTION) == CANDIDATE
    with pg_store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ft_promotions")).scalar() == 1
    champion = resources["tracking"].champion()  # type: ignore[attr-defined]
    assert champion is not None and champion.model_id == CANDIDATE and champion.version == promotion.registry_version
    assert champion.tags["previous_champion"] == PRODUCTION, "a resumed promotion keeps the model it replaced"
    done = tick(resources, instance)
    assert isinstance(done, dg.SkipReason) and "no experiment is running" in (done.skip_message or "")


def test_a_retried_decision_keeps_the_first_decision(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    prepare(store, tmp_path / "adapter")
    config = write_config(tmp_path / "c.yaml", state_dir, **WIDE_GUARDRAILS)
    resources = resources_for(config, state_dir, AFTER_WINDOW)
    assert launch(dg.RunRequest(partition_key=CYCLE, tags={EXPERIMENT_TAG: "exp-1"}), resources, instance).success
    first = store.get_experiment("exp-1")
    assert first is not None and first.decided_at is not None and first.decision == "promote", first

    later = {**resources, **{"clock": resources_for(config, state_dir, AFTER_WINDOW + timedelta(days=3))["clock"]}}
    after = dataclasses.replace(first, started_at=AFTER_WINDOW, ends_at=AFTER_WINDOW + timedelta(days=3))
    add_traffic(store, after, after.ends_at, multiplier=0.2)  # posts after the window must not re-decide it
    again = decision_job(later).execute_in_process(instance=instance, partition_key=CYCLE, raise_on_error=False)
    assert again.success
    second = store.get_experiment("exp-1")
    assert second is not None and (second.decided_at, second.decision, second.reason) == (
        first.decided_at,
        first.decision,
        first.reason,
    )
    metadata = again.asset_materializations_for_node("ab_test_outcome")[0].metadata
    assert metadata["decision"].value == "promote"


def test_the_sensor_waits_for_a_run_in_flight_and_stops_retrying_after_the_last_attempt(
    tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    start_experiment(store, ends_in_hours=0)
    resources = resources_for(write_config(tmp_path / "c.yaml", state_dir, **WIDE_GUARDRAILS), state_dir, AFTER_WINDOW)

    def add_run(status: dg.DagsterRunStatus) -> dg.DagsterRun:
        run = dg.DagsterRun(job_name=ab_test_decision_job.name, status=status, tags={EXPERIMENT_TAG: "exp-1"})
        return instance.add_run(run)

    started = add_run(dg.DagsterRunStatus.STARTED)
    waiting = tick(resources, instance)
    assert isinstance(waiting, dg.SkipReason) and started.run_id in (waiting.skip_message or "")
    instance.report_run_failed(started)
    for _ in range(MAX_DECISION_ATTEMPTS - 1):
        add_run(dg.DagsterRunStatus.FAILURE)
    given_up = tick(resources, instance)
    assert isinstance(given_up, dg.SkipReason), given_up
    assert f"failed {MAX_DECISION_ATTEMPTS} times" in (given_up.skip_message or "")
    assert "stops retrying" in (given_up.skip_message or "")
