"""The code location: one `Definitions` object, `defs`.

Resources are chosen from the environment: `DATABASE_URL`, `MLFLOW_TRACKING_URI` and `REDIS_URL` (read at run
time through `dg.EnvVar`, never copied into config; their values are checked at load, in one line each) switch
the embedded SQLite defaults to production services; `OPENAI_API_KEY` (also an `EnvVar`) is the openai
backend's and the judge's key; and `FINETUNE_EXECUTOR=k8s` runs each step in its own Kubernetes Job
(finetune_assets/k8s.py).
"""

from __future__ import annotations

import os

import dagster as dg

from finetune_assets.assets import ALL_ASSETS
from finetune_assets.deployment.k8s import select_executor
from finetune_assets.jobs import ab_test_decision_job, finetune_cycle_job
from finetune_assets.resources.cache import RedisResource
from finetune_assets.resources.clock import ClockResource
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.openai import OpenAIResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.resources.tracking import TrackingResource
from finetune_assets.schedules import weekly_finetune_schedule
from finetune_assets.sensors import ab_test_sensor, finetune_run_failure_sensor, training_data_sensor
from finetune_assets.service_urls import check_service_url
from finetune_assets.settings import Settings, get_settings


def _from_env(name: str) -> dg.EnvVar | None:
    """An `EnvVar` when `name` is set, its value checked now: a bad service URL fails the load in one line."""
    value = os.environ.get(name)
    if not value:
        return None
    check_service_url(name, value)
    return dg.EnvVar(name)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    state_dir = str(settings.resolved_state_dir())
    return {
        "pipeline": PipelineConfigResource(),
        "store": StoreResource(
            database_url=_from_env("DATABASE_URL"), posts_table=settings.posts_table, state_dir=state_dir
        ),
        "tracking": TrackingResource(
            tracking_uri=_from_env("MLFLOW_TRACKING_URI"),
            experiment_name=settings.tracking.experiment_name,
            registered_model_name=settings.tracking.registered_model_name,
            state_dir=state_dir,
        ),
        "clock": ClockResource(),
        "redis": RedisResource(url=_from_env("REDIS_URL")),
        "openai": OpenAIResource(api_key=_from_env("OPENAI_API_KEY")),
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[finetune_cycle_job, ab_test_decision_job],
    schedules=[weekly_finetune_schedule],
    sensors=[training_data_sensor, ab_test_sensor, finetune_run_failure_sensor],
    resources=build_resources(get_settings()),
    executor=select_executor(),
)
