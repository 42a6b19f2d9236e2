"""The package's one error base class: `except FinetuneAssetsError` catches every error this product raises on
purpose, which is what the CLI turns into one line on stderr instead of a traceback."""


class FinetuneAssetsError(Exception):
    """Base of every error finetune-assets raises on purpose (a user's mistake, a refused action, a failed job)."""
