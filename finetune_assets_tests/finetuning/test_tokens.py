"""Token counts, default epochs, billing tokens and cost, with the bundled cl100k_base."""

import hashlib
import shutil
from pathlib import Path

import pytest
import tiktoken_ext

from finetune_assets.finetuning import tokens
from finetune_assets.finetuning.dataset import FORMAT_COUNTERS

PRICES = {"gpt-4o-mini-2024-07-18": 3.0, "gpt-3.5-turbo": 8.0}


def chat(user: str, assistant: str, **extra: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user, **extra}, {"role": "assistant", "content": assistant}]


@pytest.mark.parametrize(
    ("n", "epochs"), [(1, 25), (3, 25), (10, 10), (30, 3), (34, 3), (100, 3), (8_334, 2), (10_000, 2), (30_000, 1)]
)
def test_default_n_epochs_is_the_cookbook_heuristic(n: int, epochs: int) -> None:
    assert tokens.default_n_epochs(n) == epochs


def test_gpt_4o_counts_are_labelled_approximate_and_gpt_35_counts_are_exact() -> None:
    approximate = tokens.counter_for_model("gpt-4o-mini-2024-07-18")
    assert approximate.approximate and approximate.encoding == "cl100k_base"
    assert approximate.label == "cl100k_base (approximate for o200k_base models)"
    assert tokens.counter_for_model("ft:gpt-4o-mini-2024-07-18:org:cycle:abc").label == approximate.label
    exact = tokens.counter_for_model("gpt-3.5-turbo-0125")
    assert not exact.approximate and exact.encoding == "cl100k_base"
    assert tokens.counter_for_model("no-such-model").approximate


def test_the_models_own_encoding_is_used_when_tiktoken_has_it_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    url = tokens.ENCODING_URLS["cl100k_base"]
    shutil.copy(bundled, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokens.counter_for_model.cache_clear()
    try:
        counter = tokens.counter_for_model("gpt-3.5-turbo-0125")
        assert (counter.encoding, counter.label, counter.approximate) == ("cl100k_base", "cl100k_base", False)
        # o200k_base is not in this cache (and nothing is downloaded): the labelled stand-in.
        assert tokens.counter_for_model("gpt-4o-2024-08-06").approximate
    finally:
        tokens.counter_for_model.cache_clear()


def test_cookbook_count_per_example() -> None:
    counter = tokens.counter_for_model("gpt-3.5-turbo-0125")
    # 3 (priming) + [3 + "user" 1 + "hello world" 2] + [3 + "assistant" 1 + "Hi there!" 3]
    assert counter.example_tokens(chat("hello world", "Hi there!")) == 16
    # a `name` key costs its encoded value plus one
    assert counter.example_tokens(chat("hello world", "Hi there!", name="bob")) == 16 + 1 + 1
    assert counter.assistant_tokens(chat("hello world", "Hi there!")) == 3


def test_billing_tokens_are_truncated_at_the_models_limit_and_cost_follows_the_price_table() -> None:
    long = {"messages": chat("word " * 6000, "ok")}
    short = {"messages": chat("hello world", "Hi there!")}
    report = tokens.preflight([long, short], "gpt-3.5-turbo-0613", prices=PRICES, n_epochs=2)
    assert report.max_tokens > 4096 and report.token_limit == 4096
    assert report.billing_tokens == 4096 + 16
    assert report.n_over_limit == 1 and not report.approximate
    assert report.price_per_million == 8.0  # prefix entry "gpt-3.5-turbo"
    assert report.estimated_cost_usd == pytest.approx((4096 + 16) * 2 * 8.0 / 1e6)


def test_preflight_uses_the_default_epochs_and_a_lower_project_limit() -> None:
    lines = [{"messages": chat(f"prompt {i}", f"answer {i}")} for i in range(20)]
    report = tokens.preflight(lines, "gpt-4o-mini-2024-07-18", prices=PRICES, max_tokens_per_example=12)
    assert report.n_epochs == tokens.default_n_epochs(20) == 5
    assert report.token_limit == 12 and report.n_over_limit == 20
    assert report.estimated_cost_usd == pytest.approx(report.billing_tokens * 5 * 3.0 / 1e6)
    assert report.as_metadata()["token_count_encoding"] == "cl100k_base (approximate for o200k_base models)"
    assert report.format_ok and report.n_missing_system == 20 and report.n_missing_user == 0


def test_preflight_reports_every_cookbook_counter() -> None:
    lines = [
        "not a dict",
        {"messages": []},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": "x", "extra": 1}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "only a prompt"}]},
    ]
    report = tokens.preflight(lines, "gpt-4o-mini-2024-07-18", prices=PRICES)
    assert set(report.format_errors) == set(FORMAT_COUNTERS)
    assert all(report.format_errors[name] >= 1 for name in FORMAT_COUNTERS), report.format_errors
    assert not report.format_ok


def test_price_and_limit_lookup() -> None:
    assert tokens.price_per_million(PRICES, "ft:gpt-4o-mini-2024-07-18:org:s:id") == 3.0
    assert tokens.price_per_million(PRICES, "gpt-4o-2024-08-06") is None
    assert tokens.model_token_limit("gpt-4o-mini-2024-07-18") == 65_536
    assert tokens.model_token_limit("unknown") is None
    assert tokens.effective_token_limit("gpt-4o-mini-2024-07-18", None, approximate=True) == int(65_536 * 0.95)
    assert tokens.effective_token_limit("unknown", 1024, approximate=True) == 1024
    assert tokens.estimated_cost_usd(1_000_000, 3, 3.0) == 9.0
