"""Datasets and the example ledger: which post trained (or was held out for) which dataset, at most once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from finetune_assets.finetuning.base import ChatExample
from finetune_assets.store.base import Queries
from finetune_assets.store.records import DatasetRecord, utcnow
from finetune_assets.store.schema import DATASET_ACTIVE, datasets, ledger


class DatasetQueries(Queries):
    def release_partition(self, conn: Connection, partition_key: str) -> int:
        """Supersede this partition's untrained datasets so a rematerialization re-collects their posts."""
        stale = [
            d
            for (d,) in conn.execute(
                sa.select(datasets.c.dataset_id).where(
                    datasets.c.partition_key == partition_key,
                    datasets.c.status.in_(("collected", "validated")),
                )
            )
        ]
        if stale:
            conn.execute(ledger.delete().where(ledger.c.dataset_id.in_(stale)))
            conn.execute(datasets.update().where(datasets.c.dataset_id.in_(stale)).values(status="superseded"))
        return len(stale)

    def record_dataset(
        self,
        conn: Connection,
        *,
        partition_key: str,
        dataset_hash: str,
        train: Sequence[tuple[int, str]],
        holdout: Sequence[tuple[int, str]],
        rejected: Sequence[tuple[int, str]],
        details: Mapping[str, Any],
    ) -> str:
        """Write the dataset and its ledger rows in the caller's transaction: all or nothing."""
        dataset_id = f"ds-{partition_key}-{uuid.uuid4().hex[:10]}"
        conn.execute(
            datasets.insert().values(
                dataset_id=dataset_id,
                partition_key=partition_key,
                dataset_hash=dataset_hash,
                status="collected",
                n_train=len(train),
                n_holdout=len(holdout),
                n_rejected=len(rejected),
                created_at=utcnow(),
                details=dict(details),
            )
        )
        rows = [
            {"post_id": pid, "dataset_id": dataset_id, "role": "train", "reason": None, "content_hash": h}
            for pid, h in train
        ]
        rows += [
            {"post_id": pid, "dataset_id": dataset_id, "role": "holdout", "reason": None, "content_hash": h}
            for pid, h in holdout
        ]
        rows += [
            {"post_id": pid, "dataset_id": dataset_id, "role": "rejected", "reason": r, "content_hash": None}
            for pid, r in rejected
        ]
        for start in range(0, len(rows), 2000):
            conn.execute(ledger.insert(), rows[start : start + 2000])
        return dataset_id

    def set_dataset_status(self, dataset_id: str, status: str, conn: Connection | None = None) -> None:
        statement = datasets.update().where(datasets.c.dataset_id == dataset_id).values(status=status)
        if conn is not None:
            conn.execute(statement)
            return
        with self.engine.begin() as own:
            own.execute(statement)

    def reject_dataset(self, dataset_id: str, conn: Connection) -> None:
        """A dataset that failed its checks gives its posts back to the pool."""
        conn.execute(ledger.delete().where(ledger.c.dataset_id == dataset_id))
        conn.execute(datasets.update().where(datasets.c.dataset_id == dataset_id).values(status="rejected"))

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        return self._first(sa.select(datasets).where(datasets.c.dataset_id == dataset_id), DatasetRecord.from_row)

    def latest_dataset(self, partition_key: str, statuses: Sequence[str] = DATASET_ACTIVE) -> DatasetRecord | None:
        query = (
            sa.select(datasets)
            .where(datasets.c.partition_key == partition_key, datasets.c.status.in_(statuses))
            .order_by(datasets.c.created_at.desc())
        )
        return self._first(query, DatasetRecord.from_row)

    def load_examples(self, dataset_id: str, role: str) -> list[ChatExample]:
        """Rebuild a dataset's examples from the ledger and the posts: no files pass between steps."""
        p = self.posts.c
        query = (
            sa.select(p.post_id, p.prompt_messages, p.completion)
            .join(ledger, ledger.c.post_id == p.post_id)
            .where(ledger.c.dataset_id == dataset_id, ledger.c.role == role)
            .order_by(p.post_id)
        )
        examples = []
        with self.engine.connect() as conn:
            for post_id, prompt, completion in conn.execute(query):
                messages = [{"role": m["role"], "content": m["content"]} for m in json.loads(prompt)]
                messages.append({"role": "assistant", "content": completion.strip()})
                examples.append(ChatExample(post_id=int(post_id), messages=tuple(messages)))
        return examples

    def ledger_posts(self, dataset_id: str, role: str | None = None) -> list[tuple[int, str, str | None]]:
        query = sa.select(ledger.c.post_id, ledger.c.role, ledger.c.reason).where(ledger.c.dataset_id == dataset_id)
        if role is not None:
            query = query.where(ledger.c.role == role)
        with self.engine.connect() as conn:
            return [(int(a), b, c) for a, b, c in conn.execute(query.order_by(ledger.c.post_id))]

    def trained_hashes_among(self, conn: Connection, hashes: Sequence[str]) -> frozenset[str]:
        """Which of `hashes` an example already trained on has: one indexed lookup per 1,000 hashes, so memory
        stays bounded by the batch, not by the training history."""
        found: set[str] = set()
        unique = sorted(set(hashes))
        for start in range(0, len(unique), 1000):
            query = (
                sa.select(ledger.c.content_hash)
                .join(datasets, datasets.c.dataset_id == ledger.c.dataset_id)
                .where(
                    ledger.c.content_hash.in_(unique[start : start + 1000]),
                    ledger.c.role == "train",
                    datasets.c.status == "trained",
                )
            )
            found.update(h for (h,) in conn.execute(query))
        return frozenset(found)
