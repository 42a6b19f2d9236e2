"""The gates as the openai backend sees them: tiktoken token limit, the cost gate, evaluation without a loss;
and the `openai:` settings section's validation."""

import pytest

from finetune_assets import checks
from finetune_assets.settings import ConfigError, parse_settings
from finetune_assets_tests.test_checks import post

OPENAI = {"backend": "openai", "base_model": "gpt-4o-mini-2024-07-18"}


def settings(**raw: object):
    return parse_settings({**OPENAI, **raw}, source="c.yaml", environ={})


def test_the_cost_gate_passes_within_budget_and_refuses_above_it() -> None:
    posts = [post(i, f"a lively post about launch number {i} " * 5) for i in range(50)]
    ok = checks.cost_within_budget(posts, settings())
    assert ok.passed and ok.metadata["n_epochs"].value == 3 and ok.metadata["billing_tokens"].value > 50 * 40
    cost = ok.metadata["estimated_cost_usd"].value
    assert cost == pytest.approx(ok.metadata["billing_tokens"].value * 3 * 3.0 / 1e6)
    refused = checks.cost_within_budget(posts, settings(openai={"max_cost_usd": cost / 2}))
    assert not refused.passed and "refused, nothing is uploaded" in (refused.description or "")
    local = checks.cost_within_budget(posts, parse_settings({}, source="c.yaml", environ={}))
    assert local.passed and local.metadata["estimated_cost_usd"].value == 0.0


def test_token_limit_counts_with_tiktoken_and_says_how() -> None:
    result = checks.token_limit([post(1, "word " * 700)], settings(max_tokens_per_example=500))
    assert not result.passed and result.metadata["limit"].value == 500 and result.metadata["max_tokens"].value > 700
    assert result.metadata["counting"].value == "cl100k_base (approximate for o200k_base models)"


def test_candidate_not_worse_without_a_heldout_loss_compares_engagement_and_says_so() -> None:
    better = {"candidate": {"predicted_engagement": 0.09}, "champion": {"predicted_engagement": 0.08}}
    ok = checks.candidate_not_worse(better, 0.02)
    assert ok.passed and ok.metadata["heldout_loss_compared"].value is False
    assert "held-out loss not available from the API" in (ok.description or "")
    worse = {"candidate": {"predicted_engagement": 0.07}, "champion": {"predicted_engagement": 0.08}}
    assert not checks.candidate_not_worse(worse, 0.02).passed
    with_loss = {k: {**v, "heldout_loss": 1.0} for k, v in better.items()}
    assert checks.candidate_not_worse(with_loss, 0.02).metadata["heldout_loss_compared"].value is True


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"backend": "openai"}, "base_model 'demo-tiny-gpt2' has no entry in openai.training_price_per_million_tokens"),
        ({"openai": {"azure_endpoint": "https://x.openai.azure.com"}}, "openai.api_version is required"),
        ({"openai": {"hyperparameters": {"n_epochs": 0}}}, 'openai.hyperparameters.n_epochs = 0: expected "auto"'),
        ({"openai": {"base_url": "api.openai.com"}}, "openai.base_url = 'api.openai.com': expected an http(s)"),
        ({"openai": {"max_cost_usd": -1}}, "openai.max_cost_usd = -1"),
        ({"openai": {"training_price_per_million_tokens": {"m": -2}}}, "expected USD prices >= 0"),
        ({"openai": {"api_key": "sk-x"}}, "unknown key 'openai.api_key'"),
    ],
)
def test_openai_settings_are_validated(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as error:
        parse_settings(raw, source="c.yaml", environ={})
    assert message in str(error.value) and str(error.value).startswith("c.yaml: ")


def test_openai_settings_defaults_and_env_override() -> None:
    parsed = parse_settings(OPENAI, source="c.yaml", environ={"FINETUNE_OPENAI__MAX_COST_USD": "5"})
    assert parsed.openai.max_cost_usd == 5 and parsed.evaluation.judge_model is None
    assert parsed.openai.hyperparameters.n_epochs == "auto" and parsed.openai.chat_concurrency == 8
