"""The platform's tables as the first release created them (`metadata.create_all` before migrations existed).

A database that release created carries no version table: `migrate` compares it with this revision and stamps
it. Never edit this file; change the schema in a new revision.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ft_datasets",
        sa.Column("dataset_id", sa.String(64), nullable=False),
        sa.Column("partition_key", sa.String(32), nullable=False),
        sa.Column("dataset_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n_train", sa.Integer(), nullable=False),
        sa.Column("n_holdout", sa.Integer(), nullable=False),
        sa.Column("n_rejected", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id"),
    )
    op.create_index("ix_ft_datasets_partition_key", "ft_datasets", ["partition_key"])

    op.create_table(
        "ft_example_ledger",
        sa.Column("post_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("dataset_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["dataset_id"], ["ft_datasets.dataset_id"]),
        sa.PrimaryKeyConstraint("post_id"),
    )
    op.create_index("ix_ft_example_ledger_dataset_role", "ft_example_ledger", ["dataset_id", "role"])
    op.create_index("ix_ft_example_ledger_content_hash", "ft_example_ledger", ["content_hash"])

    op.create_table(
        "ft_models",
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("partition_key", sa.String(32), nullable=False),
        sa.Column("dataset_id", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("base_model", sa.String(256), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["ft_datasets.dataset_id"]),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_index("ix_ft_models_partition_key", "ft_models", ["partition_key"])

    op.create_table(
        "ft_evaluations",
        sa.Column("evaluation_id", sa.String(64), nullable=False),
        sa.Column("partition_key", sa.String(32), nullable=False),
        sa.Column("candidate_model", sa.String(256), nullable=False),
        sa.Column("champion_model", sa.String(256), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("evaluation_id"),
    )
    op.create_index("ix_ft_evaluations_partition_key", "ft_evaluations", ["partition_key"])

    op.create_table(
        "ft_experiments",
        sa.Column("experiment_id", sa.String(128), nullable=False),
        sa.Column("partition_key", sa.String(32), nullable=False),
        sa.Column("control_model", sa.String(256), nullable=False),
        sa.Column("treatment_model", sa.String(256), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("split", sa.Float(), nullable=False),
        sa.Column("coverage", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("experiment_id"),
    )
    op.create_index("ix_ft_experiments_partition_key", "ft_experiments", ["partition_key"])
    op.create_index("ix_ft_experiments_status", "ft_experiments", ["status"])

    op.create_table(
        "ft_promotions",
        sa.Column("promotion_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("experiment_id", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("previous_model_id", sa.String(256), nullable=False),
        sa.Column("registry_version", sa.String(32), nullable=True),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("promotion_id"),
        sa.UniqueConstraint("experiment_id"),
    )

    op.create_table(
        "ft_uploaded_files",
        sa.Column("endpoint", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("file_id", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("n_bytes", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "sha256"),
    )


def downgrade() -> None:
    for table in (
        "ft_uploaded_files",
        "ft_promotions",
        "ft_experiments",
        "ft_evaluations",
        "ft_models",
        "ft_example_ledger",
        "ft_datasets",
    ):
        op.drop_table(table)
