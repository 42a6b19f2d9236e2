"""`runner.wait_for`: polls with backoff up to a cap, and gives up at the deadline saying the job keeps running."""

import dagster as dg
import pytest

from finetune_assets.finetuning import runner
from finetune_assets.finetuning.base import JobState


class Backend:
    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses

    def poll(self, job_id: str) -> JobState:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return JobState(job_id=job_id, status=status)  # type: ignore[arg-type]


def test_polls_back_off_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(runner.time, "sleep", sleeps.append)
    lines: list[str] = []
    backend = Backend(["queued", "running", "running", "running", "running", "running", "succeeded"])
    runner.wait_for(backend, "ftjob-1", lines.append, deadline_s=3600, poll_seconds=10, backoff=2, max_poll_seconds=60)  # type: ignore[arg-type]
    assert sleeps == [10, 20, 40, 60, 60, 60]
    assert lines[-1].startswith("job ftjob-1: succeeded after")


def test_the_deadline_fails_and_says_a_rerun_reattaches(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(runner.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(runner.time, "sleep", lambda _: None)
    with pytest.raises(dg.Failure, match="still running after 300 s; it keeps running at the provider"):
        runner.wait_for(Backend(["running"]), "ftjob-2", lambda _: None, deadline_s=300, poll_seconds=1)  # type: ignore[arg-type]
