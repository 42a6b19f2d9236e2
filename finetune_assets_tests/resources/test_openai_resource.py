"""The OpenAI key as a resource: an EnvVar from the code location, a clear failure without it."""

import dagster as dg
import pytest

from finetune_assets.definitions import build_resources
from finetune_assets.finetuning.local_backend import LocalBackend
from finetune_assets.finetuning.runner import backend_for
from finetune_assets.resources.openai import OpenAIResource
from finetune_assets.settings import parse_settings
from finetune_assets.store.platform import PlatformStore

OPENAI = {"backend": "openai", "base_model": "gpt-4o-mini-2024-07-18"}


def test_the_code_location_reads_the_key_as_an_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parse_settings(OPENAI, source="c.yaml", environ={})
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert build_resources(settings)["openai"].api_key is None  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    resource = build_resources(settings)["openai"]
    assert isinstance(resource, OpenAIResource) and resource.api_key == dg.EnvVar("OPENAI_API_KEY")


def test_without_a_key_the_openai_backend_is_one_clear_failure(store: PlatformStore) -> None:
    settings = parse_settings(OPENAI, source="c.yaml", environ={})
    resource = OpenAIResource()
    with pytest.raises(dg.Failure, match="OPENAI_API_KEY is not set"):
        backend_for(settings, store, lambda: resource.client(settings.openai))
    local = parse_settings({}, source="c.yaml", environ={})
    asked: list[str] = []

    def client() -> object:
        asked.append("client")
        return resource.client(local.openai)

    assert isinstance(backend_for(local, store, client), LocalBackend), "local needs no key"  # type: ignore[arg-type]
    assert asked == [], "the local backend never asks for the OpenAI client"
