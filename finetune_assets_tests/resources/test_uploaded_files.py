"""The platform store's memory of uploaded files (content hash -> file id, per endpoint), SQLite and Postgres."""

import pytest

from finetune_assets.store.platform import PlatformStore


def remembers_per_endpoint_and_replaces_a_lost_file(db: PlatformStore) -> None:
    sha = "a" * 64
    assert db.uploaded_file("https://api.openai.com/v1", sha) is None
    db.remember_upload(
        endpoint="https://api.openai.com/v1",
        sha256=sha,
        file_id="file-1",
        purpose="fine-tune",
        n_bytes=10,
        filename="f",
    )
    assert db.uploaded_file("https://api.openai.com/v1", sha) == "file-1"
    assert db.uploaded_file("https://example.openai.azure.com", sha) is None, "file ids are per endpoint"
    db.remember_upload(
        endpoint="https://api.openai.com/v1",
        sha256=sha,
        file_id="file-2",
        purpose="fine-tune",
        n_bytes=10,
        filename="f",
    )
    assert db.uploaded_file("https://api.openai.com/v1", sha) == "file-2"


def test_uploaded_files_on_sqlite(store: PlatformStore) -> None:
    remembers_per_endpoint_and_replaces_a_lost_file(store)


@pytest.mark.integration
def test_uploaded_files_on_postgres(pg_store: PlatformStore) -> None:
    remembers_per_endpoint_and_replaces_a_lost_file(pg_store)
