"""The OpenAI-compatible test server, driven by the real ``openai`` SDK over real HTTP.

Every typed object the SDK returns is re-validated strictly against the SDK's own pydantic models (the SDK
itself only ``construct``s them), so a field the server forgets or mistypes fails here, not in a client test.
"""

import base64
import itertools
import json
import re
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import FileObject
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint
from pydantic import BaseModel

from finetune_assets_tests.fake_openai import RESULTS_CSV_HEADER, FakeOpenAI

TOPICS = ("coffee", "deadlines", "remote work", "code review", "burnout", "hiring", "mentoring", "startups",
          "open source", "meetings", "testing", "on-call")  # fmt: skip


def example(topic: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You write engaging LinkedIn posts."},
            {"role": "user", "content": f"Write a post about {topic}."},
            {"role": "assistant", "content": f"Hot take on {topic}: small habits beat big plans. #{topic[:4]}"},
        ]
    }


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def strict(model: type[BaseModel], obj: BaseModel) -> None:
    """Validate the SDK object's raw fields against its pydantic type (missing or mistyped fields raise)."""
    model.model_validate(obj.model_dump(exclude_unset=True, by_alias=True))


@pytest.fixture
def client(openai_server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the typed objects must parse without warnings
        with openai.OpenAI(api_key=openai_server.api_key, base_url=openai_server.base_url, max_retries=2) as sdk:
            yield sdk


def upload(client: openai.OpenAI, rows: list[dict[str, Any]], name: str = "train.jsonl") -> FileObject:
    return client.files.create(file=(name, jsonl(rows)), purpose="fine-tune")


def run_to_end(client: openai.OpenAI, job_id: str, limit: int = 20) -> list[str]:
    statuses: list[str] = []
    for _ in range(limit):
        job = client.fine_tuning.jobs.retrieve(job_id)
        strict(FineTuningJob, job)
        statuses.append(job.status)
        if job.status in ("succeeded", "failed", "cancelled"):
            return statuses
    raise AssertionError(f"job {job_id} did not finish: {statuses}")


def test_upload_retrieve_content_and_delete(client: openai.OpenAI, openai_server: FakeOpenAI) -> None:
    rows = [example(t) for t in TOPICS]
    created = upload(client, rows)
    strict(FileObject, created)
    assert created.id.startswith("file-")
    assert (created.object, created.purpose, created.filename, created.bytes) == (
        "file",
        "fine-tune",
        "train.jsonl",
        len(jsonl(rows)),
    )
    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert client.files.content(created.id).content == jsonl(rows)
    assert [f.id for f in client.files.list(purpose="fine-tune")] == [created.id]
    assert openai_server.uploads[0]["sha256"] and openai_server.uploads[0]["bytes"] == created.bytes

    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("train.txt", b"{}"), purpose="fine-tune")
    assert bad.value.param == "file" and "Must be .jsonl" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("x.jsonl", b"{}"), purpose="nonsense")  # type: ignore[arg-type]
    assert bad.value.param == "purpose"

    assert client.files.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.retrieve(created.id)
    assert missing.value.status_code == 404 and missing.value.request_id
    assert missing.value.body == {
        "message": f"No such File object: {created.id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }


def test_job_lifecycle_to_succeeded(client: openai.OpenAI, openai_server: FakeOpenAI) -> None:
    training = upload(client, [example(t) for t in TOPICS])
    validation = upload(client, [example(t) for t in TOPICS[:4]], name="valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18",
        training_file=training.id,
        validation_file=validation.id,
        suffix="posts",
        seed=7,
        metadata={"cycle": "2026-11-15"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 3}}},
    )
    strict(FineTuningJob, job)
    assert job.status == "validating_files" and job.fine_tuned_model is None and job.finished_at is None
    assert job.seed == 7 and job.metadata == {"cycle": "2026-11-15"} and job.user_provided_suffix == "posts"  # type: ignore[attr-defined]
    assert job.method and job.method.supervised and job.method.supervised.hyperparameters
    assert job.method.supervised.hyperparameters.learning_rate_multiplier == "auto"

    assert run_to_end(client, job.id) == ["queued", "running", "succeeded"]
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert re.fullmatch(r"ft:gpt-4o-mini-2024-07-18:fake-org:posts:[A-Za-z0-9]{8}", done.fine_tuned_model or "")
    assert done.finished_at and done.estimated_finish is None and done.error is None
    assert done.hyperparameters.n_epochs == 4 and done.hyperparameters.batch_size == 3
    assert isinstance(done.hyperparameters.learning_rate_multiplier, float)  # "auto" resolved once running
    assert done.trained_tokens and done.trained_tokens > 0
    assert openai_server.jobs[job.id]["status"] == "succeeded"

    # Results file: base64-encoded CSV, one row per step (4 epochs x ceil(12 / 3) steps).
    results = client.files.retrieve(done.result_files[0])
    assert (results.purpose, results.filename) == ("fine-tune-results", "step_metrics.csv")
    csv = base64.b64decode(client.files.content(results.id).content).decode().splitlines()
    assert csv[0] == RESULTS_CSV_HEADER and len(csv) == 1 + 16
    assert [line.split(",")[0] for line in csv[1:]] == [str(step) for step in range(1, 17)]

    # Events: newest first, paginated through has_more/after by the SDK.
    page = client.fine_tuning.jobs.list_events(job.id, limit=5)
    assert page.has_more is True and len(page.data) == 5
    events = list(page)
    for event in events:
        strict(FineTuningJobEvent, event)
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed"
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in reversed(metrics)] == list(range(1, 17))  # type: ignore[index]
    assert metrics[0].message.startswith("Step 16/16: training loss=") and "full validation loss=" in metrics[0].message
    assert len({e.id for e in events}) == len(events)

    # Checkpoints: one per epoch, only the last 3 kept, newest first, each with full validation metrics.
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    for checkpoint in checkpoints:
        strict(FineTuningJobCheckpoint, checkpoint)
        assert checkpoint.metrics.full_valid_loss is not None and checkpoint.metrics.valid_loss is not None
        assert checkpoint.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{checkpoint.step_number}"
    assert [c.step_number for c in checkpoints] == [16, 12, 8]
    pages = [r for r in openai_server.request_records if r["path"].endswith("/checkpoints")]
    assert len(pages) == 3 and "after=" in pages[-1]["query"]

    # Both the model and a checkpoint answer in the training data's voice.
    for model in (done.fine_tuned_model, checkpoints[-1].fine_tuned_model_checkpoint):
        answer = client.chat.completions.create(
            model=model or "", messages=[{"role": "user", "content": "Write a post about burnout."}], seed=1
        )
        assert answer.choices[0].message.content == example("burnout")["messages"][2]["content"]

    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)  # already terminal


def test_job_list_pagination_and_metadata_filter(client: openai.OpenAI, openai_server: FakeOpenAI) -> None:
    training = upload(client, [example(t) for t in TOPICS])
    ids = [
        client.fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file=training.id, metadata={"key": "a" if i % 2 else "b"}
        ).id
        for i in range(5)
    ]
    first = client.fine_tuning.jobs.list(limit=2)
    assert first.has_more is True and [j.id for j in first.data] == ids[::-1][:2]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == ids[::-1]  # auto-pagination over 3 pages
    last = client.fine_tuning.jobs.list(limit=2, after=ids[1])
    assert last.has_more is False and [j.id for j in last.data] == [ids[0]]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"key": "a"})] == [ids[3], ids[1]]
    assert list(client.fine_tuning.jobs.list(metadata={"key": "zzz"})) == []
    queries = [r["query"] for r in openai_server.request_records if r["path"] == "/v1/fine_tuning/jobs"]
    assert "metadata%5Bkey%5D=a" in queries[-2] or "metadata[key]=a" in queries[-2]


def test_too_few_examples_fail_with_invalid_n_examples(client: openai.OpenAI) -> None:
    training = upload(client, [example(t) for t in TOPICS[:3]])
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id)
    assert run_to_end(client, job.id) == ["failed"]
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.error is not None and failed.fine_tuned_model is None and failed.finished_at
    assert (failed.error.code, failed.error.param, failed.error.message) == (
        "invalid_n_examples",
        "training_file",
        "Training file has 3 example(s), but must have at least 10 examples",
    )
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert (events[0].level, events[0].message) == ("error", failed.error.message)


def test_malformed_file_and_injected_failure(client: openai.OpenAI, openai_server: FakeOpenAI) -> None:
    rows: list[Any] = [example(t) for t in TOPICS]
    rows[4] = {"messages": [{"role": "user", "content": "no answer"}]}
    bad = upload(client, rows)
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=bad.id)
    run_to_end(client, job.id)
    error = client.fine_tuning.jobs.retrieve(job.id).error
    assert error and (error.code, error.param) == ("invalid_training_file", "training_file")
    assert "Line 5" in error.message and "assistant" in error.message

    good = upload(client, [example(t) for t in TOPICS])
    openai_server.fail_next_job("server_error", "The job failed due to an internal error.")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=good.id)
    assert run_to_end(client, job.id) == ["queued", "running", "failed"]
    error = client.fine_tuning.jobs.retrieve(job.id).error
    assert error and (error.code, error.message, error.param) == (
        "server_error",
        "The job failed due to an internal error.",
        None,
    )
    # Only the next job: the one after succeeds.
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=good.id)
    assert run_to_end(client, job.id)[-1] == "succeeded"


def test_cancel_a_running_job(client: openai.OpenAI, openai_server: FakeOpenAI) -> None:
    openai_server.polls_to_finish = 1000  # never finishes on its own
    training = upload(client, [example(t) for t in TOPICS])
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id)
    statuses = [client.fine_tuning.jobs.retrieve(job.id).status for _ in range(4)]
    assert statuses == ["queued", "running", "running", "running"]
    assert client.fine_tuning.jobs.retrieve(job.id).estimated_finish
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    strict(FineTuningJob, cancelled)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert next(iter(client.fine_tuning.jobs.list_events(job.id))).message == "Fine-tuning job cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.cancel("ftjob-doesnotexist")


INVALID_JOB_PARAMETERS: list[tuple[dict[str, Any], str]] = [
    ({"model": "gpt-nonexistent"}, "model"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
     "method.supervised.hyperparameters.n_epochs"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"epochs": 3}}}},
     "method.supervised.hyperparameters.epochs"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}}}, "method.dpo.hyperparameters.beta"),
    ({"method": {"type": "unsupervised"}}, "method.type"),
    ({"hyperparameters": {"learning_rate_multiplier": "fast"}}, "hyperparameters.learning_rate_multiplier"),
    ({"suffix": "x" * 65}, "suffix"),
    ({"seed": "7"}, "seed"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"training_file": "file-missing"}, "training_file"),
    ({"training_file": "BATCH"}, "training_file"),
    ({"validation_file": "BATCH"}, "validation_file"),
]  # fmt: skip


def test_invalid_job_parameters_are_400_with_param(client: openai.OpenAI) -> None:
    training = upload(client, [example(t) for t in TOPICS])
    batch = client.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    for params, param in INVALID_JOB_PARAMETERS:
        args: dict[str, Any] = {"model": "gpt-4o-mini", "training_file": training.id, **params}
        args = {k: batch.id if v == "BATCH" else v for k, v in args.items()}
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(**args)
        assert (err.value.status_code, err.value.param, err.value.type) == (400, param, "invalid_request_error"), params
        assert err.value.message and err.value.request_id
    assert client.fine_tuning.jobs.list().data == []  # nothing was created


def test_dpo_job_resolves_beta(client: openai.OpenAI) -> None:
    line = {
        "input": {"messages": [{"role": "user", "content": "Post about tea"}]},
        "preferred_output": [{"role": "assistant", "content": "Tea, a thread."}],
        "non_preferred_output": [{"role": "assistant", "content": "tea"}],
    }
    training = upload(client, [line] * 10)
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id, method={"type": "dpo"})
    assert run_to_end(client, job.id)[-1] == "succeeded"
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.method and done.method.dpo and done.method.dpo.hyperparameters
    assert done.method.dpo.hyperparameters.beta == 0.1 and done.hyperparameters.n_epochs == 10


def test_bad_api_key_is_401_without_leaking_the_key(openai_server: FakeOpenAI) -> None:
    wrong = "sk-wrong-0123456789abcdef"
    with (
        openai.OpenAI(api_key=wrong, base_url=openai_server.base_url, max_retries=2) as sdk,
        pytest.raises(openai.AuthenticationError) as err,
    ):
        sdk.files.list()
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key" and err.value.request_id
    assert wrong not in str(err.value) and "Incorrect API key provided" in err.value.message
    assert openai_server.requests == [("GET", "/v1/files", 401)]  # 401 is not retried


def test_429_is_retried_after_retry_after_ms(client: openai.OpenAI, openai_server: FakeOpenAI) -> None:
    openai_server.set_faults(0.3, seed=3, kinds=("429",))
    with client.with_options(max_retries=5) as sdk:
        for _ in range(8):
            sdk.files.list()
    records = openai_server.request_records
    statuses = [r["status"] for r in records]
    assert 429 in statuses and statuses[-1] == 200 and statuses.count(200) == 8
    for before, after in itertools.pairwise(records):
        if before["status"] == 429:  # the SDK retried the same call, counting its retries
            assert int(after["retry_count"]) == int(before["retry_count"] or 0) + 1


def test_retry_after_above_the_sdk_cap_is_not_retried(openai_server: FakeOpenAI) -> None:
    openai_server.set_faults(1.0, kinds=("429",))
    openai_server.fault_retry_after_ms = 200_000  # > the SDK v3 cap of 120 s: raise at once, no retry
    with (
        openai.OpenAI(api_key=openai_server.api_key, base_url=openai_server.base_url, max_retries=2) as sdk,
        pytest.raises(openai.RateLimitError) as err,
    ):
        sdk.files.list()
    assert err.value.response.headers["retry-after-ms"] == "200000"
    assert openai_server.requests == [("GET", "/v1/files", 429)]


def test_x_should_retry_false_stops_retries(openai_server: FakeOpenAI) -> None:
    openai_server.set_faults(1.0, kinds=("503",))
    openai_server.fault_should_retry = False
    with (
        openai.OpenAI(api_key=openai_server.api_key, base_url=openai_server.base_url, max_retries=2) as sdk,
        pytest.raises(openai.InternalServerError),
    ):
        sdk.files.list()
    assert openai_server.requests == [("GET", "/v1/files", 503)]


def test_5xx_is_retried(openai_server: FakeOpenAI) -> None:
    openai_server.set_faults(1.0, kinds=("500",))
    with openai.OpenAI(api_key=openai_server.api_key, base_url=openai_server.base_url, max_retries=1) as sdk:
        with pytest.raises(openai.InternalServerError) as err:
            sdk.fine_tuning.jobs.list()
        assert err.value.status_code == 500 and err.value.type == "server_error"
        assert [r["retry_count"] for r in openai_server.request_records] == ["0", "1"]
        openai_server.set_faults(0.5, seed=13, kinds=("503",))  # seed 13 draws: fault, then none for a while
        for _ in range(3):
            sdk.fine_tuning.jobs.list()
    retried = openai_server.request_records[2:]
    assert [(r["status"], r["retry_count"]) for r in retried] == [(503, "0"), (200, "1"), (200, "0"), (200, "0")]


def test_max_retries_0_surfaces_rate_limit_error_with_request_id(openai_server: FakeOpenAI) -> None:
    openai_server.set_faults(1.0, kinds=("429",))
    with (
        openai.OpenAI(api_key=openai_server.api_key, base_url=openai_server.base_url, max_retries=0) as sdk,
        pytest.raises(openai.RateLimitError) as err,
    ):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    (record,) = openai_server.request_records
    assert err.value.request_id == record["request_id"] and record["request_id"].startswith("req_")
    assert err.value.code == "rate_limit_exceeded" and err.value.status_code == 429
    assert err.value.response.headers["retry-after-ms"] == "10" and err.value.response.headers["retry-after"] == "1"
    assert openai_server.chat_calls == 0


def test_chat_completions(client: openai.OpenAI, openai_server: FakeOpenAI) -> None:
    messages: list[Any] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tips for hiring?"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, seed=42)
    strict(ChatCompletion, first)
    again = client.chat.completions.create(model="gpt-4o-mini", messages=messages, seed=42)
    assert first.choices[0].message.content == again.choices[0].message.content
    contents = {
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, seed=s).choices[0].message.content
        for s in range(8)
    }
    assert len(contents) > 1  # the seed matters
    usage = first.usage
    assert usage and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert first.choices[0].finish_reason == "stop" and first.choices[0].message.role == "assistant"

    short = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_completion_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage and short.usage.completion_tokens <= 2

    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="ft:gpt-4o-mini:fake-org::nope", messages=messages)
    assert err.value.code == "model_not_found" and err.value.param == "model"

    openai_server.chat_responder = lambda model, msgs: json.dumps({"score": 4, "model": model})
    judged = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert json.loads(judged.choices[0].message.content or "") == {"score": 4, "model": "gpt-4o"}

    # Four calls in flight at once: each answer waits until all four have arrived (no timing involved).
    arrived = threading.Barrier(4, timeout=10)
    openai_server.chat_responder = lambda model, msgs: str(arrived.wait())
    openai_server.chat_latency_s = 0.01
    threads = [
        threading.Thread(target=client.chat.completions.create, kwargs={"model": "gpt-4o", "messages": messages})
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert openai_server.chat_calls == 1 + 1 + 8 + 1 + 1 + 4
    assert openai_server.max_concurrent_chat == 4
