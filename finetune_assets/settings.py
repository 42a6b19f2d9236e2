"""Pipeline settings: `pipeline_config.yaml` validated by pydantic, overridable from the environment.

The file carries tunables only. Secrets (`OPENAI_API_KEY`, `DATABASE_URL` with its password) never live here:
they reach the resources through `dagster.EnvVar`. A bad file fails fast with one line naming the key, the
value and what was expected.
"""

from __future__ import annotations

import os
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from finetune_assets.errors import FinetuneAssetsError

CONFIG_ENV = "FINETUNE_CONFIG"
STATE_DIR_ENV = "FINETUNE_STATE_DIR"
ENV_PREFIX = "FINETUNE_"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "pipeline_config.yaml"


class ConfigError(FinetuneAssetsError, ValueError):
    """A user's configuration mistake: the message is meant to be shown as is, without a traceback."""


def _number_kinds(annotation: Any) -> set[type]:
    """The scalar types among int, float and bool that `annotation` accepts (through unions and Optional)."""
    if annotation in (int, float, bool):
        return {annotation}
    if get_origin(annotation) in (dict, Literal):
        return set()
    return set().union(*(_number_kinds(arg) for arg in get_args(annotation)))


def _bool_problem(annotation: Any, value: Any) -> str | None:
    """Why `value` is refused, when it is a boolean where `annotation` wants a number; None otherwise.

    Pydantic's lax mode reads True as 1 (bool is an int subclass), and YAML reads yes/no/on/off as booleans:
    without this, `max_examples_per_cycle: yes` would quietly mean 1."""
    kinds = _number_kinds(annotation)
    wanted = "an integer" if int in kinds else "a number"
    hint = "YAML reads yes/no, on/off and true/false as booleans"
    if isinstance(value, bool) and kinds & {int, float} and bool not in kinds:
        return f"expected {wanted}, not a boolean ({hint})"
    if get_origin(annotation) is dict and isinstance(value, dict):
        args = get_args(annotation)
        bad = {key: item for key, item in value.items() if len(args) == 2 and _bool_problem(args[1], item)}
        if bad:
            return f"expected a number for each entry, not a boolean: {bad} ({hint})"
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        problem = _bool_problem(field.annotation, value) if field is not None else None
        if problem:
            raise ValueError(problem)
        return value


class TrainingSettings(_Section):
    n_epochs: int = Field(3, ge=1, le=50)
    learning_rate: float = Field(2e-3, gt=0, le=1)
    batch_size: int = Field(16, ge=1, le=1024)
    lora_r: int = Field(8, ge=1, le=256)
    lora_alpha: int = Field(16, ge=1, le=1024)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    max_seq_len: int = Field(192, ge=16, le=32768)
    seed: int = 0


class EvaluationSettings(_Section):
    holdout_fraction: float = Field(0.15, gt=0, lt=0.5)
    max_holdout_examples: int = Field(200, ge=1)
    min_holdout_examples: int = Field(20, ge=1)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    generation_seed: int = 0
    max_relative_regression: float = Field(
        0.02, ge=0, lt=1, description="Candidate may score at most this fraction below the champion."
    )
    cache_ttl_hours: float = Field(
        336, gt=0, le=24 * 365, description="How long cached generations and scores live (Redis or in-process)."
    )
    judge_model: str | None = Field(
        None, description="A chat model that compares candidate and champion posts pairwise; null: no judge."
    )


class OpenAIHyperparameters(_Section):
    """Sent as `method.supervised.hyperparameters`; "auto" lets OpenAI choose (n_epochs "auto": the default of
    https://cookbook.openai.com/examples/chat_finetuning_data_prep, computed here so the cost estimate matches
    what is sent)."""

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive_int(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 50:
            raise ValueError('expected "auto" or an integer from 1 to 50')
        return value

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_multiplier(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 < value <= 10:
            raise ValueError('expected "auto" or a number in (0, 10]')
        return value


DEFAULT_TRAINING_PRICES = {
    # USD per 1M training tokens, from openai.com/api/pricing (check before relying on it; edit in the YAML)
    "gpt-4o-mini-2024-07-18": 3.0,
    "gpt-4o-2024-08-06": 25.0,
    "gpt-4.1-2025-04-14": 25.0,
    "gpt-4.1-mini-2025-04-14": 5.0,
    "gpt-4.1-nano-2025-04-14": 1.5,
    "gpt-3.5-turbo-0125": 8.0,
}


class OpenAISettings(_Section):
    """The OpenAI (or Azure OpenAI) backend. The API key is never here: `OPENAI_API_KEY` in the environment."""

    base_url: str | None = Field(None, description="null: the SDK's default (https://api.openai.com/v1).")
    azure_endpoint: str | None = Field(None, description="Azure OpenAI: https://<resource>.openai.azure.com")
    api_version: str | None = Field(None, description="Azure OpenAI api-version, e.g. 2024-10-21.")
    max_cost_usd: float = Field(20.0, ge=0, description="A fine-tune whose estimated cost is above is refused.")
    training_price_per_million_tokens: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TRAINING_PRICES))
    hyperparameters: OpenAIHyperparameters = OpenAIHyperparameters()
    poll_interval_seconds: float = Field(15.0, gt=0, le=3600)
    poll_backoff: float = Field(1.5, ge=1, le=10, description="Each poll waits this factor longer, up to the max.")
    max_poll_interval_seconds: float = Field(300.0, gt=0, le=3600)
    job_deadline_hours: float = Field(24.0, gt=0, le=24 * 30)
    request_timeout_seconds: float = Field(120.0, gt=0, le=3600)
    max_retries: int = Field(5, ge=0, le=20, description="SDK retries of 408/409/429/5xx and connection errors.")
    circuit_breaker_failures: int = Field(5, ge=1, le=1000, description="Consecutive failures that open it.")
    circuit_breaker_reset_seconds: float = Field(60.0, gt=0, le=3600)
    chat_concurrency: int = Field(8, ge=1, le=256, description="Chat completions in flight at once.")
    temperature: float = Field(0.8, ge=0, le=2)
    select_checkpoint: Literal["final", "lowest_full_valid_loss"] = "final"

    @field_validator("training_price_per_million_tokens")
    @classmethod
    def _prices_non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {model: price for model, price in value.items() if not price >= 0}
        if bad:
            raise ValueError(f"expected USD prices >= 0 per model, got {bad}")
        return value

    @field_validator("base_url", "azure_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http(s):// URL")
        return value

    @model_validator(mode="after")
    def _azure_complete(self) -> OpenAISettings:
        if self.azure_endpoint and not self.api_version:
            raise ValueError("openai.api_version is required with openai.azure_endpoint (e.g. 2024-10-21)")
        if self.azure_endpoint and self.base_url:
            raise ValueError("set either openai.base_url or openai.azure_endpoint, not both")
        return self


class ExperimentSettings(_Section):
    split: float = Field(0.5, gt=0, lt=1, description="Share of enrolled users who get the candidate.")
    coverage: float = Field(1.0, gt=0, le=1, description="Share of users enrolled in the experiment.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Two-sided; promotion needs the CI above 0.")
    min_users_per_arm: int = Field(100, ge=8)
    srm_threshold: float = Field(0.001, gt=0, lt=0.5)
    harm_alpha: float = Field(0.025, gt=0, lt=0.5, description="One-sided level of the hourly harm monitor.")
    monitor_interval_minutes: int = Field(60, ge=5, le=24 * 60, description="How often the harm/SRM monitor looks.")
    guardrail_margin: float = Field(
        0.05, ge=0, lt=1, description="Guardrails (impressions, engagements per user) may be this much worse."
    )
    min_detectable_effect: float = Field(
        0.05, gt=0, lt=1, description="Relative lift the test must detect with `power` (pre-launch power gate)."
    )
    power: float = Field(0.8, gt=0.5, lt=1)
    underpowered: Literal["warn", "refuse"] = Field(
        "warn", description="warn: start and record that the test is under-powered; refuse: do not start."
    )


class TrackingSettings(_Section):
    experiment_name: str = Field("finetune-assets", min_length=1)
    registered_model_name: str = Field("post-writer", min_length=1)


class Settings(_Section):
    training_data_threshold: int = Field(100, ge=1, description="New examples needed to start a cycle.")
    engagement_threshold: float = Field(0.06, gt=0, lt=1, description="engagements / impressions floor.")
    min_impressions: int = Field(100, ge=1, description="Impressions needed for the rate to mean something.")
    a_b_test_duration_hours: int = Field(168, ge=1, le=24 * 90)
    timezone: str = "UTC"
    partitions_start_date: date = date(2026, 1, 4)
    posts_table: str = Field("generated_posts", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    max_examples_per_cycle: int = Field(5000, ge=1)
    max_prompt_chars: int = Field(8000, ge=1)
    max_completion_chars: int = Field(4000, ge=1)
    max_tokens_per_example: int = Field(1024, ge=16)
    backend: Literal["local", "openai"] = "local"
    base_model: str = Field("demo-tiny-gpt2", min_length=1)
    state_dir: Path = Path(".state")
    training: TrainingSettings = TrainingSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    experiment: ExperimentSettings = ExperimentSettings()
    tracking: TrackingSettings = TrackingSettings()
    openai: OpenAISettings = OpenAISettings()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("expected an IANA timezone name such as 'UTC' or 'Europe/Berlin'") from exc
        return value

    @model_validator(mode="after")
    def _holdout_fits(self) -> Settings:
        if self.evaluation.min_holdout_examples > self.evaluation.max_holdout_examples:
            raise ValueError("evaluation.min_holdout_examples must not exceed evaluation.max_holdout_examples")
        return self

    @model_validator(mode="after")
    def _openai_model_priced(self) -> Settings:
        if self.backend == "openai" and not _has_price(self.openai.training_price_per_million_tokens, self.base_model):
            raise ValueError(
                f"backend openai: base_model {self.base_model!r} has no entry in "
                "openai.training_price_per_million_tokens (USD per 1M training tokens), so its cost cannot be "
                "checked against openai.max_cost_usd"
            )
        return self

    def resolved_state_dir(self) -> Path:
        return Path(os.environ.get(STATE_DIR_ENV) or self.state_dir).expanduser().resolve()


def _has_price(prices: dict[str, float], model: str) -> bool:
    from finetune_assets.finetuning.tokens import price_per_million

    return price_per_million(prices, model) is not None


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """`FINETUNE_ENGAGEMENT_THRESHOLD=0.08`, `FINETUNE_TRAINING__N_EPOCHS=2`: values parsed as YAML scalars."""
    overrides: dict[str, Any] = {}
    reserved = {CONFIG_ENV, STATE_DIR_ENV}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in reserved:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in Settings.model_fields:
            continue
        target = overrides
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = yaml.safe_load(raw) if raw.strip() else raw
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: Any, source: str) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<root>"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}' (check the spelling; see pipeline_config.yaml for the keys)"
    if error["type"] == "missing":
        return f"{source}: missing key '{key}'"
    message = message.removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    if isinstance(error.get("input"), dict):  # a section-level rule: the message names its keys and values
        return f"{source}: {message}" if key == "<root>" else f"{source}: {key}: {message}"
    return f"{source}: {key} = {error.get('input')!r}: {message}"


def parse_settings(raw: Any, *, source: str, environ: dict[str, str] | None = None) -> Settings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}")
    data = _merge(raw, _env_overrides(dict(os.environ if environ is None else environ)))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], source)) from None


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{CONFIG_ENV}={path}: file not found (expected a pipeline_config.yaml)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_settings(raw, source=str(path), environ=environ)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once (the code location reloads on change)."""
    return load_settings()
