"""Plain parts of the OpenAI backend: the train/validation split, the results CSV, job errors."""

import base64
from types import SimpleNamespace

import pytest

from finetune_assets.finetuning.base import ChatExample
from finetune_assets.finetuning.openai_files import (
    OpenAIBackendError,
    disjoint_validation,
    format_job_error,
    jsonl_bytes,
    parse_results_csv,
)

CSV = (
    "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"
    "1,1.52347,0.0,,\n"
    "2,1.2,0.5,1.4,0.45\n"
    "3,0.9,0.6,,\n"
)


def example(post_id: int, text: str) -> ChatExample:
    return ChatExample(
        post_id, ({"role": "user", "content": f"write about {text}"}, {"role": "assistant", "content": text})
    )


def test_validation_never_overlaps_training_by_content() -> None:
    train = [example(1, "cats"), example(2, "dogs")]
    # post 3 has the same content as post 1 (another id); post 5 repeats post 4
    validation = [example(3, "cats"), example(4, "birds"), example(5, "birds"), example(6, "fish ")]
    kept, dropped = disjoint_validation(train, validation)
    assert [e.post_id for e in kept] == [4, 6] and dropped == 2


def test_jsonl_is_one_chat_example_per_line() -> None:
    data = jsonl_bytes([example(1, "cats"), example(2, "dogs")]).decode()
    assert data.count("\n") == 2 and data.splitlines()[0].startswith('{"messages": [')


@pytest.mark.parametrize("encode", [False, True], ids=["raw", "base64"])
def test_results_csv_raw_or_base64(encode: bool) -> None:
    body = base64.b64encode(CSV.encode()) if encode else CSV.encode()
    curve = parse_results_csv(body)
    assert curve.train_loss == [(1, 1.52347), (2, 1.2), (3, 0.9)]
    assert curve.valid_loss == [(2, 1.4)] and curve.valid_accuracy == [(2, 0.45)]
    assert curve.train_accuracy[-1] == (3, 0.6)


def test_a_results_file_that_is_neither_is_a_clear_error() -> None:
    with pytest.raises(OpenAIBackendError, match="neither CSV nor base64-encoded CSV"):
        parse_results_csv(b"epoch,loss\n1,2\n")
    with pytest.raises(OpenAIBackendError, match="header is"):
        parse_results_csv(b"step,loss\n1,2\n")


def test_job_error_line_carries_code_message_and_param() -> None:
    error = SimpleNamespace(code="invalid_n_examples", message="Training file has 3 example(s)", param="training_file")
    assert format_job_error(error) == "invalid_n_examples: Training file has 3 example(s) (param: training_file)"
    assert format_job_error(None) == "no error details"
