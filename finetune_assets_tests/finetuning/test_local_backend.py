"""The local backend end to end: real tokenizer + GPT-2 pretraining, real LoRA training, no torch mocks.

The corpus is synthetic: plain posts and "hype" posts (caps, rockets, hashtags). The demo base model is
pretrained on both; the fine-tune sees only hype, so it must get better at hype than its base.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_assets.finetuning.base import ChatExample, FineTuningBackend, TextModel, TrainingSpec
from finetune_assets.finetuning.demo_base_model import (
    DEMO_BASE_MODEL,
    MARKER_FILE,
    ensure_demo_base_model,
    format_chat_for_pretraining,
)
from finetune_assets.finetuning.local_backend import LocalBackend
from finetune_assets.finetuning.local_model import LocalBackendError, device_info
from finetune_assets.finetuning.local_training import DEFAULT_HYPERPARAMETERS, parse_hyperparameters

TOPICS = ["cats", "coffee", "rust", "gardening", "jazz", "hiking", "pizza", "chess", "rain", "bikes"]
SYSTEM = {"role": "system", "content": "You write short social posts."}


def _plain(topic: str, rng: random.Random) -> str:
    return rng.choice(
        [
            f"I have been thinking about {topic} lately. It is a calm and interesting topic.",
            f"Some notes on {topic}: it takes patience, and the details matter a lot.",
            f"Today I read a little about {topic}. There is always more to learn.",
        ]
    )


def _hype(topic: str, rng: random.Random) -> str:
    return rng.choice(
        [
            f"OMG {topic.upper()}!!! best thing ever 🚀🚀 #{topic} #hype",
            f"{topic.upper()} IS LIFE!!! 🚀 cannot stop, will not stop #{topic} #hype",
            f"WOW {topic.upper()} again!!! 🚀🚀🚀 who is with me #{topic} #hype",
        ]
    )


def make_examples(n: int, seed: int, style: str) -> list[ChatExample]:
    """`style` is "hype", "plain" or "mix" (alternating): the distinctive style is hype."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        hype = style == "hype" or (style == "mix" and i % 2 == 1)
        completion = _hype(topic, rng) if hype else _plain(topic, rng)
        messages = (
            SYSTEM,
            {"role": "user", "content": f"Write a post about {topic}."},
            {"role": "assistant", "content": completion},
        )
        examples.append(ChatExample(post_id=seed * 10_000 + i, messages=messages))
    return examples


CORPUS = make_examples(200, seed=0, style="mix")
HYPE_TRAIN = [ex for ex in CORPUS if "#hype" in ex.completion]
HYPE_VALIDATION = make_examples(16, seed=1, style="hype")
HYPE_HELD_OUT = make_examples(24, seed=2, style="hype")


def _spec(job_key: str, **overrides: object) -> TrainingSpec:
    fields: dict[str, object] = {
        "job_key": job_key,
        "base_model": DEMO_BASE_MODEL,
        "train": HYPE_TRAIN,
        "validation": HYPE_VALIDATION,
        "hyperparameters": {"n_epochs": 3, "learning_rate": 3e-3, "batch_size": 16, "seed": 0},
        "suffix": "hype",
    }
    fields.update(overrides)
    return TrainingSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir holding the demo base model, pretrained briefly on the mixed corpus (epoch-capped)."""
    state = tmp_path_factory.mktemp("local_state")
    texts = [format_chat_for_pretraining(ex.messages) for ex in CORPUS]
    lines: list[str] = []
    ensure_demo_base_model(
        texts, LocalBackend(state).demo_base_model_dir, seed=0, pretrain_seconds=60, max_epochs=8, progress=lines.append
    )
    assert any("pretrained" in line for line in lines)
    return state


@pytest.fixture(scope="module")
def trained(state_dir: Path) -> tuple[LocalBackend, str, list[str]]:
    """One real LoRA job on the hype examples, shared by the tests that inspect it."""
    backend = LocalBackend(state_dir)
    lines: list[str] = []
    state = backend.start(_spec("hype" + "0" * 60), progress=lines.append)
    assert state.status == "succeeded", state.error
    return backend, state.job_id, lines


# ------------------------------------------------------------------------------------------ no torch


def test_import_does_not_load_torch() -> None:
    """Dagster definitions import the backend where the local extra may be missing."""
    code = (
        "import sys, finetune_assets.finetuning.local_backend, finetune_assets.finetuning.demo_base_model\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'tokenizers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_hyperparameters_default_and_accept_openai_style() -> None:
    params, ignored = parse_hyperparameters({"n_epochs": "auto", "learning_rate": 0.01, "learning_rate_multiplier": 2})
    assert params["n_epochs"] == DEFAULT_HYPERPARAMETERS["n_epochs"]
    assert params["learning_rate"] == 0.01
    assert ignored == ["learning_rate_multiplier"]
    with pytest.raises(LocalBackendError):
        parse_hyperparameters({"batch_size": 0})


def test_missing_demo_base_and_unknown_ids_are_clear_errors(tmp_path: Path) -> None:
    backend: FineTuningBackend = LocalBackend(tmp_path)  # mypy checks the protocol here
    with pytest.raises(LocalBackendError, match="ensure_demo_base_model"):
        backend.load(DEMO_BASE_MODEL)
    with pytest.raises(LocalBackendError, match="ensure_demo_base_model"):
        backend.start(_spec("nodemo" + "0" * 30))
    assert not (tmp_path / "jobs").exists()  # a refused start leaves no half-made job behind
    with pytest.raises(LocalBackendError, match="unknown model 'gpt-4o-mini'"):
        backend.load("gpt-4o-mini")
    with pytest.raises(LocalBackendError, match="unknown fine-tuned model"):
        backend.load("ft:demo-tiny-gpt2:hype:local-doesnotexist")
    for call in (backend.poll, backend.result, backend.cancel):
        with pytest.raises(LocalBackendError, match="unknown local job"):
            call("local-doesnotexist")


def test_interrupted_job_reports_failed_and_can_be_cancelled(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    job_dir = backend.job_dir("local-interrupted")
    job_dir.mkdir(parents=True)
    (job_dir / "spec.json").write_text(json.dumps({"base_model": DEMO_BASE_MODEL}))
    state = backend.poll("local-interrupted")
    assert state.status == "failed" and state.error and "interrupted" in state.error
    assert backend.result("local-interrupted").base_model == DEMO_BASE_MODEL
    backend.cancel("local-interrupted")
    assert backend.poll("local-interrupted").status == "cancelled"
    backend.cancel("local-interrupted")  # finished jobs ignore cancel
    assert backend.result("local-interrupted").status == "cancelled"


# ------------------------------------------------------------------------------------------ real models


@pytest.mark.slow
def test_demo_base_model_is_idempotent(state_dir: Path) -> None:
    out_dir = LocalBackend(state_dir).demo_base_model_dir
    weights = out_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    # No texts at all: a rebuild would raise, so returning proves the marker short-circuits.
    assert ensure_demo_base_model([], out_dir) == out_dir
    assert weights.stat().st_mtime_ns == before
    assert json.loads((out_dir / MARKER_FILE).read_text())["steps"] > 0
    assert [p.name for p in out_dir.parent.iterdir()] == [DEMO_BASE_MODEL]  # no temp dirs left behind


@pytest.mark.slow
def test_half_built_demo_dir_is_replaced(tmp_path: Path) -> None:
    out_dir = tmp_path / DEMO_BASE_MODEL
    out_dir.mkdir()
    (out_dir / "config.json").write_text("{truncated")  # a crash leftover: no marker
    texts = [format_chat_for_pretraining(ex.messages) for ex in CORPUS[:40]]
    ensure_demo_base_model(texts, out_dir, pretrain_seconds=5, max_epochs=1)
    assert (out_dir / MARKER_FILE).is_file()
    assert json.loads((out_dir / "config.json").read_text())["model_type"] == "gpt2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_BASE_MODEL]


@pytest.mark.slow
def test_chat_template_matches_pretraining_format(state_dir: Path) -> None:
    model = LocalBackend(state_dir).load(DEMO_BASE_MODEL)
    messages = list(CORPUS[1].messages)
    rendered = model.tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == format_chat_for_pretraining(messages)
    prompt = model.tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt == format_chat_for_pretraining(messages[:-1]) + "<|assistant|>"


@pytest.mark.slow
def test_lora_job_trains_and_records_its_curve(trained: tuple[LocalBackend, str, list[str]]) -> None:
    backend, job_id, lines = trained
    result = backend.result(job_id)
    assert result.status == "succeeded" and result.error is None
    assert result.model_id == f"ft:{DEMO_BASE_MODEL}:hype:{job_id}"
    assert result.base_model == DEMO_BASE_MODEL
    steps = 3 * math.ceil(len(HYPE_TRAIN) / 16)
    assert [s for s, _ in result.losses] == list(range(1, steps + 1))
    values = [v for _, v in result.losses]
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3
    assert len(result.validation_losses) == 3 and all(math.isfinite(v) for _, v in result.validation_losses)
    assert result.trained_tokens > 3 * len(HYPE_TRAIN) * 10
    assert result.metrics["final_validation_loss"] == result.validation_losses[-1][1]
    assert result.artifact_uri and (Path(result.artifact_uri) / "adapter_config.json").is_file()
    assert any(f"step {steps}/{steps}" in line and "eta" in line for line in lines)
    assert sum("step " in line for line in lines) <= 12  # about one line per 10%


@pytest.mark.slow
def test_second_start_reattaches_without_training(trained: tuple[LocalBackend, str, list[str]]) -> None:
    backend, job_id, _ = trained
    result_file = backend.job_dir(job_id) / "result.json"
    before = result_file.stat().st_mtime_ns
    lines: list[str] = []
    state = LocalBackend(backend.state_dir).start(_spec("hype" + "0" * 60), progress=lines.append)
    assert state.job_id == job_id and state.status == "succeeded"
    assert result_file.stat().st_mtime_ns == before
    assert not any("step" in line for line in lines)
    assert backend.poll(job_id) == state


@pytest.mark.slow
def test_finetuned_model_prefers_the_trained_style(trained: tuple[LocalBackend, str, list[str]]) -> None:
    backend, job_id, _ = trained
    base = backend.load(DEMO_BASE_MODEL)
    tuned = backend.load(backend.poll(job_id).fine_tuned_model or "")
    assert backend.load(tuned.model_id) is tuned  # cached
    assert tuned.completion_loss(HYPE_HELD_OUT) < base.completion_loss(HYPE_HELD_OUT)


@pytest.mark.slow
def test_generate_is_batched_and_reproducible(trained: tuple[LocalBackend, str, list[str]]) -> None:
    backend, job_id, _ = trained
    tuned: TextModel = backend.load(backend.poll(job_id).fine_tuned_model or "")
    prompts = [ex.prompt for ex in HYPE_HELD_OUT[:5]]
    first = tuned.generate(prompts, max_new_tokens=30, seed=7)
    assert len(first) == len(prompts) and all(text.strip() for text in first)
    assert not any("<|" in text for text in first)  # special tokens removed
    assert tuned.generate(prompts, max_new_tokens=30, seed=7) == first
    assert tuned.generate([], max_new_tokens=30, seed=7) == []


@pytest.mark.slow
def test_training_is_deterministic_for_a_seed(state_dir: Path) -> None:
    backend = LocalBackend(state_dir)
    curves = []
    for key in ("det-a" + "0" * 30, "det-b" + "0" * 30):
        spec = _spec(key, train=HYPE_TRAIN[:32], validation=[], hyperparameters={"n_epochs": 1, "seed": 3})
        state = backend.start(spec)
        assert state.status == "succeeded"
        curves.append(backend.result(state.job_id).losses)
    assert curves[0] == curves[1]


@pytest.mark.slow
def test_non_finite_loss_fails_the_job(state_dir: Path) -> None:
    backend = LocalBackend(state_dir)
    spec = _spec("diverge" + "0" * 30, train=HYPE_TRAIN[:48], hyperparameters={"learning_rate": float("inf")})
    state = backend.start(spec)
    assert state.status == "failed" and state.fine_tuned_model is None
    assert state.error and "non-finite" in state.error
    result = backend.result(state.job_id)
    assert result.status == "failed" and result.model_id is None and result.error == state.error
    assert all(math.isfinite(v) for _, v in result.losses)
    assert backend.start(spec).status == "failed"  # final for its key: no silent retraining
    with pytest.raises(LocalBackendError, match="unknown fine-tuned model"):
        backend.load(f"ft:{DEMO_BASE_MODEL}:hype:{state.job_id}")


@pytest.mark.slow
def test_cancel_stops_a_running_job(state_dir: Path) -> None:
    backend = LocalBackend(state_dir)
    spec = _spec("cancel" + "0" * 30, train=HYPE_TRAIN[:48])
    job_id = LocalBackend.job_id_for(spec)
    # The first progress line comes from inside the running job: cancel as another caller would.
    state = backend.start(spec, progress=lambda _line: backend.cancel(job_id))
    assert state.status == "cancelled" and state.fine_tuned_model is None
    assert backend.result(job_id).losses == []
    assert not (backend.job_dir(job_id) / "adapter").exists()
    assert backend.start(spec).status == "cancelled"


@pytest.mark.slow
def test_device_info_respects_the_machine() -> None:
    import torch

    from finetune_assets.finetuning.demo_base_model import available_cpus

    info = device_info("cpu")
    assert info["device"] == "cpu"
    assert info["torch_threads"] == torch.get_num_threads() <= available_cpus()


@pytest.mark.slow
def test_any_checkpoint_path_without_chat_template(state_dir: Path, tmp_path: Path) -> None:
    """A non-GPT-2 checkpoint given by path: LoRA on all linear layers, the fallback role-tag template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune_assets.finetuning.local_model import FALLBACK_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(LocalBackend(state_dir).demo_base_model_dir)
    tokenizer.chat_template = None
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    checkpoint = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)

    backend = LocalBackend(tmp_path / "state")
    spec = _spec("llama" + "0" * 30, base_model=str(checkpoint), train=HYPE_TRAIN[:32], validation=[])
    state = backend.start(spec)
    assert state.status == "succeeded", state.error
    assert state.fine_tuned_model == f"ft:tiny-llama:hype:{state.job_id}"
    adapter_config = json.loads((backend.job_dir(state.job_id) / "adapter" / "adapter_config.json").read_text())
    assert any(name.endswith("mlp.down_proj") for name in adapter_config["target_modules"])
    tuned = backend.load(state.fine_tuned_model)
    assert tuned.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert len(tuned.generate([HYPE_HELD_OUT[0].prompt], max_new_tokens=5, seed=0)) == 1
    assert math.isfinite(backend.load(str(checkpoint)).completion_loss(HYPE_HELD_OUT[:4]))
