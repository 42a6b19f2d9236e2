"""The platform's tables, their indexes and the SQL expressions that serve both an index and its query.

The content app owns `generated_posts` (the platform only reads it); every `ft_*` table here is the platform's
and is created and changed only by the migrations in `finetune_assets/store/migrations/`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

INDEX_ORDER_PLAN_OFF = ("enable_hashagg", "enable_seqscan", "enable_bitmapscan")
"""Planner methods `arm_totals` turns off (for its own transaction only) so that Postgres streams the covering
experiment index in order instead of hashing every user of a large experiment."""

DATASET_ACTIVE = ("collected", "validated", "trained")
"""Datasets whose posts are taken: a rejected or superseded dataset gives its posts back."""


def posts_table(name: str = "generated_posts", meta: sa.MetaData | None = None) -> sa.Table:
    """The content app's table. DDL and indexes are documented in docs/data-model.md."""
    meta = meta if meta is not None else sa.MetaData()
    table = sa.Table(
        name,
        meta,
        sa.Column("post_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("experiment_id", sa.String(128), nullable=True),
        sa.Column("variant", sa.String(32), nullable=True),
        sa.Column("prompt_messages", sa.Text, nullable=True),
        sa.Column("completion", sa.Text, nullable=True),
        sa.Column("impressions", sa.BigInteger, nullable=False),
        sa.Column("engagements", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        # A/B analysis sums one experiment's posts per arm and user: covering, so Postgres reads the index alone,
        # already grouped (`PlatformStore.arm_totals`).
        sa.Index(
            f"ix_{name}_experiment_user",
            "experiment_id",
            "variant",
            "user_id",
            postgresql_include=["impressions", "engagements"],
        ),
    )
    # Organic posts (never A/B traffic) by engagement rate, carrying the counts: the sensor's count and the
    # collection's candidate ids are index-only range scans over the qualifying posts, and the pool's aggregates
    # index-only scans over all organic ones. The expression is `engagement_rate`'s, which the queries use.
    organic = table.c.experiment_id.is_(None)
    sa.Index(
        f"ix_{name}_organic_rate",
        engagement_rate(table.c),
        table.c.post_id,
        postgresql_include=["impressions", "engagements"],
        postgresql_where=organic,
        sqlite_where=organic,
    )
    return table


def engagement_rate(c: Any) -> sa.ColumnElement[Any]:
    """engagements / impressions in floating point, NULL without impressions: the rate the checks compute in
    Python, so the boundary is the same on SQLite and Postgres (`engagements >= 0.06 * impressions` is exact
    numeric arithmetic on Postgres, several times slower per row, and a rounded product on SQLite)."""
    return sa.cast(c.engagements, sa.Float) / sa.cast(sa.func.nullif(c.impressions, 0), sa.Float)


datasets = sa.Table(
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

ledger = sa.Table(
    "ft_example_ledger",
    metadata,
    # One row per post at most: a post belongs to one live dataset, so it is trained on at most once.
    sa.Column("post_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("dataset_id", sa.String(64), sa.ForeignKey("ft_datasets.dataset_id"), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # train | holdout | rejected
    sa.Column("reason", sa.String(64), nullable=True),
    sa.Column("content_hash", sa.String(64), nullable=True),
    sa.Index("ix_ft_example_ledger_dataset_role", "dataset_id", "role"),
    sa.Index("ix_ft_example_ledger_content_hash", "content_hash"),
)

models = sa.Table(
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

evaluations = sa.Table(
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

experiments = sa.Table(
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
    sa.Column("status", sa.String(16), nullable=False, index=True),  # running | decided | invalid
    sa.Column("decision", sa.String(16), nullable=True),  # promote | keep
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("details", sa.JSON, nullable=False),
)

promotions = sa.Table(
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

uploaded_files = sa.Table(
    "ft_uploaded_files",
    metadata,
    # A training file's content hash -> the id the provider gave it: the same bytes are never uploaded twice.
    # Keyed by endpoint too: a file id is only valid at the API (OpenAI, an Azure resource) that issued it.
    sa.Column("endpoint", sa.String(512), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("file_id", sa.String(128), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("n_bytes", sa.BigInteger, nullable=False),
    sa.Column("filename", sa.String(256), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
