"""Local checkpoints as text models: loading (local files only), chat encoding, generation and scoring.

Shared by the local trainer (`local_training`) and the backend's `load`; torch and transformers are imported
inside functions, so importing this module is cheap.

Chat format: the checkpoint tokenizer's own chat template. A tokenizer without one gets
`FALLBACK_CHAT_TEMPLATE`, one block per message:
    <|role|>\\n{content}{eos_token}\\n     and `<|assistant|>\\n` as the generation prompt.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.finetuning.base import ChatExample, Message
from finetune_assets.finetuning.demo_base_model import configure_torch_threads, quiet_transformers, resolve_device

if TYPE_CHECKING:
    import torch

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + (eos_token or '') + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
MAX_EVAL_CONTEXT = 2048


class LocalBackendError(FinetuneAssetsError, RuntimeError):
    """A local job or model that cannot be found, loaded or trained as asked."""


def device_info(device: str = "auto") -> dict[str, Any]:
    """The resolved device and torch thread count, for the run log (why a job was fast or slow)."""
    import torch

    resolved = resolve_device(device)
    info: dict[str, Any] = {
        "device": resolved,
        "torch_threads": configure_torch_threads(),
        "torch_version": torch.__version__,
    }
    if resolved.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(resolved))
    return info


# --------------------------------------------------------------------------------------------- encoding


def chat_parts(example: ChatExample) -> tuple[list[Message], list[Message]]:
    """(prompt, prompt + completion): everything up to the last assistant message, and through it."""
    messages = list(example.messages)
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise LocalBackendError(f"example {example.post_id} has no assistant message to learn or score")
    last = assistant[-1]
    return messages[:last], messages[: last + 1]


def render_prompt(tokenizer: Any, prompt: Sequence[Message]) -> str:
    return cast(str, tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True))


def encode_example(tokenizer: Any, example: ChatExample, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels, prompt labelled -100 so only the assistant's tokens (and end-of-turn) count.

    Prompt and completion are tokenized separately: the boundary is exact whatever the tokenizer, and
    matches generation, where the model continues the tokenized prompt. Over-long examples lose the start
    of the prompt first (kept to at least half the window), then the end of the completion.
    """
    prompt, full = chat_parts(example)
    prompt_text = render_prompt(tokenizer, prompt)
    full_text = cast(str, tokenizer.apply_chat_template(full, tokenize=False))
    if full_text.startswith(prompt_text):
        completion_text = full_text[len(prompt_text) :]
    else:  # templates that render history differently from a generation prompt (e.g. reasoning tags)
        completion_text = example.completion + (tokenizer.eos_token or "")
    prompt_ids: list[int] = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids: list[int] = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + len(completion_ids) > max_len:
        keep_completion = min(len(completion_ids), max_len - min(len(prompt_ids), max_len // 2))
        completion_ids = completion_ids[:keep_completion]
        keep_prompt = max_len - len(completion_ids)
        prompt_ids = prompt_ids[-keep_prompt:] if keep_prompt > 0 else []
    return prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids


def collate(
    batch: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (padding labelled -100)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        labels[row, : len(labs)] = torch.tensor(labs, dtype=torch.long)
    return input_ids.to(device), attention.to(device), labels.to(device)


def nll_sum(model: Any, batch: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str) -> tuple[Any, int]:
    """Summed next-token NLL over labelled tokens and their count (a token-weighted mean needs both)."""
    import torch
    import torch.nn.functional as F

    input_ids, attention, labels = collate(batch, pad_id, device)
    with autocast(device):
        logits = model(input_ids=input_ids, attention_mask=attention).logits
    targets = labels[:, 1:]
    n_tokens = int((targets != -100).sum())
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return (loss if n_tokens else torch.zeros((), device=device)), n_tokens


def autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mean_nll(
    model: Any, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str, batch_size: int
) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(encoded), batch_size):
            loss, n = nll_sum(model, encoded[first : first + batch_size], pad_id, device)
            total += float(loss)
            count += n
    return total / count if count else float("nan")


@contextlib.contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """Seed torch for a block without disturbing the caller's global RNG state."""
    import torch

    cuda_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------------ models


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT calls a transformers API that v5 deprecated; the FutureWarning is noise in every run log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_checkpoint(path: Path, device: str, tokenizer_path: Path | None = None) -> tuple[Any, Any]:
    """Model and tokenizer from local files only (never the hub), with a chat template and a pad token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    configure_torch_threads()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or path), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LocalBackendError(f"tokenizer at {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out, so any id will do
    return model.to(device), tokenizer


def context_limit(model: Any, cap: int) -> int:
    config = model.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or cap
    return int(min(int(limit), cap))


def stop_token_ids(tokenizer: Any) -> list[int]:
    """eos plus, for the demo tokenizer, the end-of-turn token: generation ends with the message."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    if isinstance(end_id, int) and end_id != tokenizer.unk_token_id and end_id >= 0:
        ids.add(end_id)
    return sorted(ids)


class _DropPaddingWarning(logging.Filter):
    """Drops transformers' "pass an attention_mask" warning, a false alarm during batched generation.

    generate() does pass the mask; transformers drops it internally once it is all ones, and rows that
    already ended are then fed pad tokens, which trips the heuristic. Batched and one-by-one generation
    give identical text, so the warning would only mislead whoever reads the run log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "strongly recommend passing in an `attention_mask`" not in record.getMessage()


_PADDING_FILTER = _DropPaddingWarning()


class LocalTextModel:
    """A loaded base or fine-tuned model that writes completions and scores assistant messages."""

    def __init__(
        self,
        model_id: str,
        model: Any,
        tokenizer: Any,
        device: str,
        *,
        temperature: float = 0.8,
        top_k: int = 50,
        batch_size: int = 16,
    ) -> None:
        self.model_id = model_id
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.temperature = temperature
        self.top_k = top_k
        self.batch_size = batch_size
        self.context_limit = context_limit(model, MAX_EVAL_CONTEXT)
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every core
        logging.getLogger("transformers.modeling_utils").addFilter(_PADDING_FILTER)  # idempotent

    def generate(self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int, seed: int) -> list[str]:
        """Sampled completions (temperature, top-k), left-padded batches, reproducible for a seed.

        Batch `i` is seeded with `seed + i`, so results depend on the seed and the prompt list, not on
        what else ran in the process. Only the new text is returned, special tokens removed, stripped.
        """
        import torch

        if not prompts:
            return []
        if max_new_tokens <= 0:
            return ["" for _ in prompts]
        tok = self.tokenizer
        room = max(1, self.context_limit - max_new_tokens)
        encoded = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"][-room:] for p in prompts]
        outputs: list[str] = []
        with self._lock, torch.no_grad():
            for batch_no, first in enumerate(range(0, len(encoded), self.batch_size)):
                chunk = encoded[first : first + self.batch_size]
                width = max(len(ids) for ids in chunk)
                input_ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, ids in enumerate(chunk):
                    if ids:
                        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                        attention[row, width - len(ids) :] = 1
                with seeded(seed + batch_no, self.device), autocast(self.device):
                    generated = self.model.generate(
                        input_ids=input_ids.to(self.device),
                        attention_mask=attention.to(self.device),
                        do_sample=True,
                        temperature=self.temperature,
                        top_k=self.top_k,
                        top_p=1.0,
                        max_new_tokens=max_new_tokens,
                        min_new_tokens=1,  # a post is never empty
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=stop_token_ids(tok),
                    )
                new_tokens = generated[:, width:]
                outputs.extend(text.strip() for text in tok.batch_decode(new_tokens, skip_special_tokens=True))
        return outputs

    def completion_loss(self, examples: Sequence[ChatExample]) -> float:
        """Token-weighted mean NLL of the assistant messages (end-of-turn included) given their prompts."""
        if not examples:
            raise ValueError("completion_loss needs at least one example")
        encoded = [encode_example(self.tokenizer, ex, self.context_limit) for ex in examples]
        with self._lock:
            return mean_nll(self.model, encoded, self.tokenizer.pad_token_id, self.device, self.batch_size)
