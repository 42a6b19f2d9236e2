"""The `finetune-assets` command: one module per verb family, `main` in `cli.main`."""

from finetune_assets.cli.main import main

__all__ = ["main"]
