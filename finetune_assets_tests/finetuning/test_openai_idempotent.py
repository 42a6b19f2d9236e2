"""Creates that happen once, against the local OpenAI-compatible server: a create the server performed but whose
answer was lost (a 500 or a dropped connection), within one call and across a killed process, and duplicates
that slipped through anyway (a listing that lags behind, another process)."""

import hashlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from finetune_assets.finetuning.openai_backend import JOB_KEY, OpenAIBackend
from finetune_assets.finetuning.openai_client import OpenAIClient
from finetune_assets.finetuning.openai_creates import retry_delay
from finetune_assets.finetuning.openai_files import jsonl_bytes
from finetune_assets.settings import OpenAISettings
from finetune_assets_tests.fake_openai import FakeOpenAI
from finetune_assets_tests.finetuning.test_openai_backend import Files, spec, wait

pytestmark = pytest.mark.integration
JOBS, FILES = "POST /fine_tuning/jobs", "POST /files"
LOST_ERRORS = {"500": openai.InternalServerError, "drop": openai.APIConnectionError}


class Killed(BaseException):
    """The process dies (as SystemExit would) while it waits to retry."""


def backend(
    server: FakeOpenAI, files: Files, sleeps: list[float], *, max_retries: int = 3, kill: bool = False
) -> tuple[OpenAIBackend, list[str]]:
    """A backend over a fresh client whose sleeps are recorded (or kill the process) instead of waited, and a
    list for its progress lines."""

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if kill:
            raise Killed("killed while waiting to retry a create")

    settings = OpenAISettings.model_validate({"base_url": server.base_url, "max_retries": max_retries})
    made = OpenAIBackend(
        OpenAIClient.from_settings(settings, server.api_key), files, max_tokens_per_example=1024, sleep=sleep
    )
    return made, []


def posts(server: FakeOpenAI, endpoint: str) -> list[dict[str, Any]]:
    method, path = endpoint.split(" ")
    return [r for r in server.request_records if r["method"] == method and r["path"] == "/v1" + path]


@pytest.fixture
def sdk(openai_server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=openai_server.api_key, base_url=openai_server.base_url, max_retries=0) as client:
        yield client


# -- the server's faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "drop"])
def test_a_lost_answer_leaves_the_object_and_the_sdk_alone_pays_twice(
    openai_server: FakeOpenAI, sdk: openai.OpenAI, kind: str
) -> None:
    data = jsonl_bytes(spec().train)
    openai_server.lose_after_success(FILES, kind=kind)
    with pytest.raises(LOST_ERRORS[kind]):
        sdk.files.create(file=("a.jsonl", data), purpose="fine-tune")
    [lost] = openai_server.lost_responses
    assert lost["endpoint"] == FILES and lost["kind"] == kind
    assert [f.id for f in sdk.files.list(purpose="fine-tune")] == [lost["id"]], "the file exists and is listed"
    openai_server.lose_after_success(JOBS, kind=kind)
    retrying = sdk.with_options(max_retries=1)
    job = retrying.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=lost["id"], metadata={JOB_KEY: "k"})
    assert len(openai_server.jobs) == 2 and job.id in openai_server.jobs, "the SDK's own retry made a second job"
    assert [r["lost"] for r in posts(openai_server, JOBS)] == [kind, None]


def test_the_fault_knobs_refuse_bad_arguments_with_the_value(openai_server: FakeOpenAI) -> None:
    with pytest.raises(ValueError, match=r"create endpoints .* got 'GET /files'"):
        openai_server.lose_after_success("GET /files")
    with pytest.raises(ValueError, match=r"kind must be one of \('500', 'drop'\); got '503'"):
        openai_server.lose_after_success(JOBS, kind="503")
    with pytest.raises(ValueError, match=r"positive integer; got 0"):
        openai_server.fail_before_acting(FILES, times=0)
    with pytest.raises(ValueError, match=r"no file or job 'file-nope'"):
        openai_server.hide_from_lists("file-nope")


def test_a_hidden_object_is_missing_from_the_next_listings_only(openai_server: FakeOpenAI, sdk: openai.OpenAI) -> None:
    made = sdk.files.create(file=("a.jsonl", b"{}\n"), purpose="fine-tune")
    openai_server.hide_from_lists(made.id, times=2)
    listings = [[f.id for f in sdk.files.list()] for _ in range(3)]
    assert listings == [[], [], [made.id]] and sdk.files.retrieve(made.id).id == made.id


# -- within one call -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "drop"])
def test_a_lost_job_create_is_found_and_not_sent_again(openai_server: FakeOpenAI, kind: str) -> None:
    sleeps: list[float] = []
    made, lines = backend(openai_server, Files(), sleeps)
    openai_server.lose_after_success(JOBS, kind=kind)
    state = made.start(spec(), lines.append)
    [job_id] = openai_server.jobs
    assert state.job_id == job_id == openai_server.lost_responses[0]["id"]
    assert len(posts(openai_server, JOBS)) == 1, "found by its job key, so never sent again"
    assert len(sleeps) == 1 and 0.375 <= sleeps[0] <= 0.5, "the SDK's first backoff"
    assert any("attempt 1 of 4 failed" in line for line in lines)
    assert any(f"found {job_id}, made by the attempt whose answer was lost" in line for line in lines)
    assert wait(made, job_id).status == "succeeded"
    assert made.result(job_id).metrics["duplicate_jobs_cancelled"] == 0.0


@pytest.mark.parametrize("kind", ["500", "drop"])
def test_a_lost_upload_is_found_and_each_content_is_uploaded_once(openai_server: FakeOpenAI, kind: str) -> None:
    files = Files()
    made, lines = backend(openai_server, files, [])
    openai_server.lose_after_success(FILES, kind=kind, times=2)  # both the training and the validation file
    state = made.start(spec(), lines.append)
    uploads = openai_server.uploads
    assert len(uploads) == 2 and len({u["sha256"] for u in uploads}) == 2, "one file per content"
    assert {lost["id"] for lost in openai_server.lost_responses} == {u["id"] for u in uploads}
    job = openai_server.jobs[state.job_id]
    assert {job["training_file"], job["validation_file"]} == set(files.ids.values()) == {u["id"] for u in uploads}
    assert len(posts(openai_server, FILES)) == 2
    assert sum("made by the attempt whose answer was lost" in line for line in lines) == 2


def test_a_create_that_failed_before_acting_is_sent_again_without_the_sdk_retrying(
    openai_server: FakeOpenAI,
) -> None:
    sleeps: list[float] = []
    made, lines = backend(openai_server, Files(), sleeps)
    openai_server.fail_before_acting(JOBS, times=2)
    state = made.start(spec(), lines.append)
    assert list(openai_server.jobs) == [state.job_id]
    sent = posts(openai_server, JOBS)
    assert [r["status"] for r in sent] == [503, 503, 200]
    assert {r["retry_count"] for r in sent} == {"0"}, "each attempt is ours: the SDK retried none"
    assert len(sleeps) == 2 and sleeps[1] > 0.5, "exponential backoff between our attempts"


def test_when_every_attempt_fails_nothing_is_created_and_the_error_is_one_line(openai_server: FakeOpenAI) -> None:
    made, lines = backend(openai_server, Files(), [], max_retries=2)
    openai_server.fail_before_acting(JOBS, times=3)
    with pytest.raises(openai.InternalServerError) as raised:
        made.start(spec(), lines.append)
    assert openai_server.jobs == {} and len(posts(openai_server, JOBS)) == 3
    assert made.explain(raised.value) == "OpenAI API: InternalServerError HTTP 503: " + (
        f"Error code: 503 - The server is overloaded or not ready yet. (request {raised.value.request_id})"
    )


def test_the_backoff_is_the_sdks_and_the_server_has_the_last_word(openai_server: FakeOpenAI, sdk: openai.OpenAI):
    def error_of(kinds: tuple[str, ...]) -> openai.APIError:
        openai_server.set_faults(1.0, kinds=kinds)
        try:
            sdk.files.list()
        except openai.APIError as exc:
            return exc
        finally:
            openai_server.set_faults(0.0)
        raise AssertionError("no fault")

    unavailable = error_of(("503",))
    assert [retry_delay(unavailable, n, jitter=lambda: 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert retry_delay(unavailable, 0, jitter=lambda: 1.0) == 0.375
    openai_server.fault_retry_after_ms = 250
    assert retry_delay(error_of(("429",)), 3) == 0.25, "retry-after-ms is honoured"
    openai_server.fault_retry_after_ms = 121_000
    assert retry_delay(error_of(("429",)), 0) is None, "longer than the SDK would wait: not retried"
    openai_server.fault_should_retry = False
    assert retry_delay(error_of(("500",)), 0) is None, "x-should-retry: false"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.files.retrieve("file-nope")
    assert retry_delay(missing.value, 0) is None


# -- duplicates that slipped through ---------------------------------------------------------------------------


def create_job(sdk: openai.OpenAI, key: str = "key-1") -> str:
    training = sdk.files.create(file=("other.jsonl", jsonl_bytes(spec().train)), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18", training_file=training.id, metadata={JOB_KEY: key}
    )
    return job.id


def test_a_duplicate_job_for_the_key_is_cancelled_keeping_the_one_further_along(
    openai_server: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    older, newer = create_job(sdk), create_job(sdk)
    for _ in range(2):  # validating_files -> queued -> running
        sdk.fine_tuning.jobs.retrieve(newer)
    made, lines = backend(openai_server, Files(), [])
    state = made.start(spec(), lines.append)
    assert state.job_id == newer and state.status == "running"
    assert openai_server.jobs[older]["status"] == "cancelled" and openai_server.jobs[newer]["status"] == "running"
    assert f"duplicate job {older} (validating_files) for this key: cancelled it, keeping {newer}" in lines
    assert wait(made, newer).status == "succeeded"
    assert made.result(newer).metrics["duplicate_jobs_cancelled"] == 1.0


def test_a_job_hidden_from_a_stale_listing_wins_over_the_one_created_beside_it(
    openai_server: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    earlier = create_job(sdk)
    sdk.fine_tuning.jobs.retrieve(earlier)  # queued: further along than a new job
    openai_server.hide_from_lists(earlier)
    made, lines = backend(openai_server, Files(), [])
    state = made.start(spec(), lines.append)
    [ours] = [job_id for job_id in openai_server.jobs if job_id != earlier]
    assert state.job_id == earlier and openai_server.jobs[ours]["status"] == "cancelled"
    assert any(f"duplicate job {ours}" in line and f"keeping {earlier}" in line for line in lines)


def test_a_duplicate_started_while_the_job_ran_is_cancelled_when_the_result_is_read(
    openai_server: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    made, lines = backend(openai_server, Files(), [])
    state = made.start(spec(), lines.append)
    assert wait(made, state.job_id).status == "succeeded"
    other = create_job(sdk)  # another process that did not see ours
    assert made.result(state.job_id).metrics["duplicate_jobs_cancelled"] == 1.0
    assert openai_server.jobs[other]["status"] == "cancelled"


def test_a_duplicate_upload_hidden_from_the_lookup_is_deleted_keeping_the_oldest(
    openai_server: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    data = jsonl_bytes(spec().train)
    name = f"finetune-assets-{hashlib.sha256(data).hexdigest()}.jsonl"
    earlier = sdk.files.create(file=(name, data), purpose="fine-tune").id
    openai_server.hide_from_lists(earlier)
    files = Files()
    made, lines = backend(openai_server, files, [])
    state = made.start(spec(), lines.append)
    named = [f.id for f in sdk.files.list(purpose="fine-tune") if f.filename == name]
    assert len(named) == 1 and len([u for u in openai_server.uploads if u["filename"] == name]) == 2
    assert openai_server.jobs[state.job_id]["training_file"] == named[0] and named[0] in files.ids.values()
    assert any("1 duplicate upload(s) of the same content" in line for line in lines)


# -- across a killed process -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "drop"])
@pytest.mark.parametrize("endpoint", [JOBS, FILES])
def test_a_process_killed_after_a_lost_create_is_picked_up_by_a_fresh_one(
    openai_server: FakeOpenAI, endpoint: str, kind: str
) -> None:
    files = Files()
    first, first_lines = backend(openai_server, files, [], kill=True)
    openai_server.lose_after_success(endpoint, kind=kind)
    with pytest.raises(Killed):
        first.start(spec(), first_lines.append)
    del first  # abandoned with its client, as a killed process leaves it
    [lost] = openai_server.lost_responses
    second, lines = backend(openai_server, files, [])
    state = second.start(spec(), lines.append)
    assert len(openai_server.jobs) == 1 and len(openai_server.uploads) == 2, "nothing was made twice"
    assert len({u["sha256"] for u in openai_server.uploads}) == 2
    if endpoint == JOBS:
        assert state.job_id == lost["id"] and any(line.startswith("re-attached") for line in lines)
    else:
        assert (
            openai_server.jobs[state.job_id]["training_file"]
            == lost["id"]
            == files.ids.get((second.api.endpoint, openai_server.uploads[0]["sha256"]))
        )
