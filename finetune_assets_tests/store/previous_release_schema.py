"""FROZEN: the platform tables exactly as the release before migrations created them (`metadata.create_all`).
Never change this file: it stands for databases already deployed."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

sa.Table(
    "ft_datasets",
    metadata,
    sa.Column("dataset_id", sa.String(64), primary_key=True),
    sa.Column("partition_key", sa.String(32), nullable=False, index=True),
    sa.Column("dataset_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("n_train", sa.Integer, nullable=False),
    sa.Column("n_holdout", sa.Integer, nullable=False),
    sa.Column("n_rejected", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
)
sa.Table(
    "ft_example_ledger",
    metadata,
    sa.Column("post_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("dataset_id", sa.String(64), sa.ForeignKey("ft_datasets.dataset_id"), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=True),
    sa.Column("content_hash", sa.String(64), nullable=True),
    sa.Index("ix_ft_example_ledger_dataset_role", "dataset_id", "role"),
    sa.Index("ix_ft_example_ledger_content_hash", "content_hash"),
)
sa.Table(
    "ft_models",
    metadata,
    sa.Column("model_id", sa.String(256), primary_key=True),
    sa.Column("partition_key", sa.String(32), nullable=False, index=True),
    sa.Column("dataset_id", sa.String(64), sa.ForeignKey("ft_datasets.dataset_id"), nullable=False),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("base_model", sa.String(256), nullable=False),
    sa.Column("job_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
)
sa.Table(
    "ft_evaluations",
    metadata,
    sa.Column("evaluation_id", sa.String(64), primary_key=True),
    sa.Column("partition_key", sa.String(32), nullable=False, index=True),
    sa.Column("candidate_model", sa.String(256), nullable=False),
    sa.Column("champion_model", sa.String(256), nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("scores", sa.JSON, nullable=False),
)
sa.Table(
    "ft_experiments",
    metadata,
    sa.Column("experiment_id", sa.String(128), primary_key=True),
    sa.Column("partition_key", sa.String(32), nullable=False, index=True),
    sa.Column("control_model", sa.String(256), nullable=False),
    sa.Column("treatment_model", sa.String(256), nullable=False),
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("split", sa.Float, nullable=False),
    sa.Column("coverage", sa.Float, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("decision", sa.String(16), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("details", sa.JSON, nullable=False),
)
sa.Table(
    "ft_promotions",
    metadata,
    sa.Column("promotion_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.String(128), nullable=False, unique=True),
    sa.Column("model_id", sa.String(256), nullable=False),
    sa.Column("previous_model_id", sa.String(256), nullable=False),
    sa.Column("registry_version", sa.String(32), nullable=True),
    sa.Column("promoted", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "ft_uploaded_files",
    metadata,
    sa.Column("endpoint", sa.String(512), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("file_id", sa.String(128), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("n_bytes", sa.BigInteger, nullable=False),
    sa.Column("filename", sa.String(256), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
