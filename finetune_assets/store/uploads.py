"""Files uploaded to a fine-tuning API: the same bytes are never uploaded twice to one endpoint."""

from __future__ import annotations

import sqlalchemy as sa

from finetune_assets.store.base import Queries
from finetune_assets.store.records import utcnow
from finetune_assets.store.schema import uploaded_files


class UploadQueries(Queries):
    def uploaded_file(self, endpoint: str, sha256: str) -> str | None:
        """The file id an earlier upload of these exact bytes got at `endpoint`, or None."""
        query = sa.select(uploaded_files.c.file_id).where(
            uploaded_files.c.endpoint == endpoint, uploaded_files.c.sha256 == sha256
        )
        with self.engine.connect() as conn:
            file_id = conn.execute(query).scalar()
        return str(file_id) if file_id else None

    def remember_upload(
        self, *, endpoint: str, sha256: str, file_id: str, purpose: str, n_bytes: int, filename: str
    ) -> None:
        """Record (or replace, when the provider lost the old one) the file id for these bytes."""
        key = sa.and_(uploaded_files.c.endpoint == endpoint, uploaded_files.c.sha256 == sha256)
        values = {"file_id": file_id, "purpose": purpose, "n_bytes": n_bytes, "filename": filename}
        with self.engine.begin() as conn:
            if not conn.execute(uploaded_files.update().where(key).values(**values)).rowcount:
                conn.execute(
                    uploaded_files.insert().values(endpoint=endpoint, sha256=sha256, created_at=utcnow(), **values)
                )
