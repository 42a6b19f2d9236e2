from finetune_assets.resources.tracking import redact


def test_credentials_never_reach_messages() -> None:
    assert redact("http://alice:s3cret@mlflow.internal:5000/") == "http://***@mlflow.internal:5000/"
    assert "s3cret" not in redact("postgresql://u:s3cret@db/x")
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
