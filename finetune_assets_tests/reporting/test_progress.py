"""Progress lines: the run log and the terminal get the same lines; the terminal only while asked."""

import io
import logging
import re

import pytest

from finetune_assets.finetuning.base import JobState
from finetune_assets.finetuning.runner import wait_for
from finetune_assets.reporting.progress import PROGRESS_LOGGER, Counter, format_duration, reporter, to_terminal


def test_reporter_writes_to_the_run_log_and_to_the_terminal_only_inside_to_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_log: list[str] = []
    say = reporter(run_log.append)
    say("before")
    terminal = io.StringIO()
    with to_terminal(terminal, prefix="  > "):
        say("step 3/10")
    say("after")
    assert run_log == ["before", "step 3/10", "after"]
    assert terminal.getvalue() == "  > step 3/10\n"
    assert capsys.readouterr() == ("", "")  # nothing leaks to the console outside the block
    assert logging.getLogger(PROGRESS_LOGGER).propagate is False


def test_counter_reports_share_elapsed_and_eta() -> None:
    now = [100.0]
    counter = Counter(400, clock=lambda: now[0])
    assert counter.line() == "0/400 (0s)"
    now[0] = 130.0
    assert counter.advance(100) == "100/400 (25%, 30s elapsed, ETA 1m30s)"
    now[0] = 220.0
    assert counter.advance(300, "posts written") == "400/400 posts written (100%, 2m00s elapsed, ETA 0s)"
    assert format_duration(7380) == "2h03m"


class SlowJob:
    """A backend whose job needs three polls: the protocol's poll side only (no Dagster, no MLflow)."""

    name = "slow"

    def __init__(self) -> None:
        self.polls = 0

    def poll(self, job_id: str) -> JobState:
        self.polls += 1
        return JobState(job_id, "succeeded" if self.polls >= 3 else "running")


def test_polling_a_remote_job_says_how_long_it_has_run() -> None:
    lines: list[str] = []
    backend = SlowJob()
    wait_for(backend, "ftjob-1", lines.append, deadline_s=60, poll_seconds=0.01)  # type: ignore[arg-type]
    assert backend.polls == 3
    assert len(lines) == 2
    assert lines[0].startswith("job ftjob-1: running after 0s (poll 2, every 0s; gives up in ")
    assert lines[1].startswith("job ftjob-1: succeeded after 0s (poll 3")


def test_a_demo_cycle_prints_training_and_evaluation_progress(demo_instance) -> None:
    """What `make demo` shows while it trains: the cycle ran with the demo's quiet console config and
    `to_terminal()`, as `finetune-assets demo` does, and these lines reached the terminal."""
    lines = demo_instance.progress_lines
    steps = [line for line in lines if ": step " in line]
    assert len(steps) >= 5, lines
    assert all(" eta " in line and " elapsed " in line for line in steps)
    last = re.search(r": step (\d+)/(\d+) ", steps[-1])
    assert last is not None and last.group(1) == last.group(2)  # it reports the final step
    assert any("validation loss" in line for line in lines)
    assert any(line.strip().startswith("evaluation 1/2: candidate") for line in lines)
    assert not any("DEBUG" in line or "STEP_SUCCESS" in line for line in lines)  # only progress, no event log
