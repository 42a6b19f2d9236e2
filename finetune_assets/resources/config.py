"""Pipeline settings as a resource, so a run (or a test) can point at another `pipeline_config.yaml`."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from finetune_assets.settings import Settings, get_settings, load_settings


class PipelineConfigResource(dg.ConfigurableResource):
    """`config_path` unset: the file named by `FINETUNE_CONFIG`, else the repository's pipeline_config.yaml."""

    config_path: str | None = None

    def get(self) -> Settings:
        return load_settings(Path(self.config_path)) if self.config_path else get_settings()
