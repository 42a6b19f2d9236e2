"""Metrics pushed to a real HTTP receiver on loopback standing in for the Pushgateway (its push API)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from finetune_assets.assets import ab_test, ab_test_outcome, generated_posts, training_data
from finetune_assets.reporting import metrics as observability
from finetune_assets.sensors import training_data_sensor
from finetune_assets.store.platform import PlatformStore
from finetune_assets_tests.conftest import NOW, resources_for, seed, start_experiment, write_config


@dataclass
class Receiver:
    url: str
    pushes: list[tuple[str, str, str]] = field(default_factory=list)
    status: int = 200

    def samples(self, index: int = -1) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        body = self.pushes[index][2]
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }

    def names(self, index: int = -1) -> set[str]:
        return {name for name, _ in self.samples(index)}


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            state.pushes.append((self.command, self.path, body))
            self.send_response(state.status)
            self.end_headers()

        do_POST = do_PUT = _record

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(observability.PUSHGATEWAY_ENV, state.url)
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is a process that has set nothing yet (the metric values themselves are module state)."""
    monkeypatch.setattr(observability, "_touched", set())
    monkeypatch.delenv(observability.PUSHGATEWAY_ENV, raising=False)


def test_without_a_pushgateway_nothing_is_sent() -> None:
    assert observability.report_fine_tune(status="succeeded", trained_tokens=10, cost_usd=0.0) is False


def test_a_push_is_a_post_of_only_what_this_process_set(receiver: Receiver) -> None:
    assert observability.report_fine_tune(status="succeeded", trained_tokens=123456, cost_usd=4.5) is True
    method, path, _ = receiver.pushes[-1]
    assert (method, path) == ("POST", "/metrics/job/finetune_assets")  # POST: other steps' metrics stay
    samples = receiver.samples()
    assert samples[("finetune_fine_tune_trained_tokens", ())] == 123456
    assert samples[("finetune_fine_tune_cost_usd", ())] == 4.5
    assert samples[("finetune_fine_tune_job_status", (("status", "succeeded"),))] == 1
    assert samples[("finetune_fine_tune_last_success_timestamp_seconds", ())] > NOW.timestamp() - 365 * 86400
    assert not {n for n in receiver.names() if n.startswith(("finetune_ab_", "finetune_evaluation_"))}


def test_state_sets_hold_only_the_latest_value(receiver: Receiver) -> None:
    observability.report_fine_tune(status="succeeded", trained_tokens=1, cost_usd=0.0)
    observability.report_fine_tune(status="failed", trained_tokens=0, cost_usd=0.0)
    statuses = {dict(labels)["status"] for name, labels in receiver.samples() if name.endswith("job_status")}
    assert statuses == {"failed"}
    observability.report_ab_outcome(
        users={"control": 0, "treatment": 0},
        rates={},
        lift=None,
        srm_p_value=1.0,
        code="stop_harm",
    )
    samples = receiver.samples()
    assert samples[("finetune_ab_test_decision", (("code", "stop_harm"),))] == 1
    assert samples[("finetune_ab_test_harm_detected", ())] == 1
    assert not any(name == "finetune_ab_test_engagement_rate" for name, _ in samples)


def test_sensor_counters_accumulate_in_the_code_server(receiver: Receiver) -> None:
    before = (
        observability.REGISTRY.get_sample_value("finetune_sensor_run_requests_total", {"sensor": "ab_test_sensor"}) or 0
    )
    observability.report_run_request("ab_test_sensor")
    observability.report_run_request("ab_test_sensor")
    assert receiver.samples()[("finetune_sensor_run_requests_total", (("sensor", "ab_test_sensor"),))] == before + 2
    observability.report_run_failure("finetune_cycle_job")
    assert ("finetune_run_failures_total", (("dagster_job", "finetune_cycle_job"),)) in receiver.samples()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "url",
    [f"http://user:hunter2@127.0.0.1:{closed_port()}", "http://[::1"],
    ids=["unreachable", "malformed"],
)
def test_a_broken_gateway_is_a_warning_never_an_error(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv(observability.PUSHGATEWAY_ENV, url)
    warnings: list[str] = []
    assert observability.report_qualifying(3, warn=warnings.append) is False
    (warning,) = warnings
    assert warning.startswith("metrics not pushed to PROMETHEUS_PUSHGATEWAY_URL=")
    assert "hunter2" not in warning and "user" not in warning


def test_a_gateway_error_status_is_a_warning(receiver: Receiver) -> None:
    receiver.status = 500
    warnings: list[str] = []
    assert observability.report_qualifying(3, warn=warnings.append) is False
    assert len(receiver.pushes) == 1 and "500" in warnings[0]


def test_training_data_sensor_reports_qualifying_examples(
    receiver: Receiver, tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    seed(store, n_posts=600)
    waiting, _ = store.count_qualifying(100, 0.06)
    config = write_config(tmp_path / "c.yaml", state_dir, training_data_threshold=50)
    context = dg.build_sensor_context(instance=instance, cursor="0", resources=resources_for(config, state_dir))
    assert isinstance(training_data_sensor(context), dg.SensorResult)
    samples = receiver.samples()
    assert samples[("finetune_qualifying_examples", ())] == waiting
    assert samples[("finetune_sensor_run_requests_total", (("sensor", "training_data_sensor"),))] >= 1


def test_training_data_pushes_its_dataset(
    receiver: Receiver, tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    seed(store, n_posts=600)
    config = write_config(tmp_path / "c.yaml", state_dir, training_data_threshold=20)
    result = dg.materialize(
        [generated_posts, training_data],
        selection=[training_data.key],
        partition_key="2026-11-15",
        resources=resources_for(config, state_dir),
        instance=instance,
    )
    meta = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    samples = receiver.samples()
    for role in ("train", "holdout", "rejected"):
        assert samples[("finetune_dataset_examples", (("role", role),))] == meta[f"n_{role}"]


def test_ab_test_outcome_pushes_its_decision(
    receiver: Receiver, tmp_path: Path, state_dir: Path, store: PlatformStore, instance: dg.DagsterInstance
) -> None:
    config = write_config(tmp_path / "c.yaml", state_dir)
    start_experiment(store, ends_in_hours=-32)  # its window closed 32 hours ago
    dg.materialize(
        [ab_test, ab_test_outcome],
        selection=[ab_test_outcome.key],
        partition_key="2026-11-15",
        resources=resources_for(config, state_dir),
        instance=instance,
        raise_on_error=False,  # no traffic: its enough_data check fails, after the metrics were pushed
    )
    samples = receiver.samples()
    assert samples[("finetune_ab_test_decision", (("code", "too_few_users"),))] == 1
    assert samples[("finetune_ab_test_harm_detected", ())] == 0
    assert samples[("finetune_ab_test_users", (("arm", "control"),))] == 0
