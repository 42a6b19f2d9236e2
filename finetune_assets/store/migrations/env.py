"""Alembic's entry point for the platform's tables: runs on the connection `migrate.alembic_config` passes in.

The version table is `ft_alembic_version` (Dagster and MLflow keep their own `alembic_version` in the same
database), and autogenerate compares only the `ft_*` tables: the app's `generated_posts` is not ours.
"""

from __future__ import annotations

from alembic import context

from finetune_assets.store.migrate import VERSION_TABLE, include_name
from finetune_assets.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("run the platform migrations through finetune_assets.store.migrate (it passes a connection)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    include_name=include_name,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
