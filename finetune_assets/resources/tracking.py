"""MLflow tracking and the model registry.

Runs are opened through dagster-mlflow's `MlFlow` (the `mlflow_tracking` resource's implementation): it finds
or starts the one MLflow run tagged with the Dagster run id, so every step of a run logs to the same MLflow
run, even from separate step processes. Its end-of-run hook is deliberately not used (dagster-io/dagster
#21872: it ends the MLflow run early in graphs with parallel branches); each step ends the run it resumed.

mlflow and dagster_mlflow are imported lazily: loading the definitions must stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dagster as dg

CHAMPION_ALIAS = "champion"


class TrackingUnavailable(RuntimeError):
    """The MLflow server cannot be reached: the message says which URI and what to check."""


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    model_id: str
    tags: dict[str, str]
    aliases: tuple[str, ...] = ()
    run_id: str | None = None
    source: str | None = None


def _registered(name: str, version: Any) -> RegisteredVersion:
    return RegisteredVersion(
        name,
        str(version.version),
        version.tags.get("model_id", ""),
        dict(version.tags),
        tuple(getattr(version, "aliases", None) or ()),
        version.run_id or None,
        version.source or None,
    )


def redact(uri: str) -> str:
    """A URI fit for messages: credentials in it (user:password@) are replaced by `***`."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class TrackingResource(dg.ConfigurableResource):
    """`tracking_uri` comes from `MLFLOW_TRACKING_URI`; unset, a SQLite store under the state directory."""

    tracking_uri: str | None = None
    experiment_name: str = "finetune-assets"
    registered_model_name: str = "post-writer"
    state_dir: str = ".state"

    def uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        path = Path(self.state_dir).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path / 'mlflow.db'}"

    def _ensure_experiment(self) -> None:
        client = _client(self.uri())
        if client.get_experiment_by_name(self.experiment_name) is None:
            artifacts = None
            if not self.tracking_uri:
                artifacts = (Path(self.state_dir).resolve() / "mlartifacts").as_uri()
            client.create_experiment(self.experiment_name, artifact_location=artifacts)

    @contextmanager
    def run(self, context: dg.AssetExecutionContext, *, step: str) -> Iterator[Any]:
        """The MLflow run of this Dagster run (dagster-mlflow's `MlFlow`), ended when the step ends."""
        import mlflow
        from dagster_mlflow.resources import MlFlow

        try:
            self._ensure_experiment()
            init_context = SimpleNamespace(
                log=context.log,
                dagster_run=context.run,
                run_id=context.run_id,
                resource_config={
                    "experiment_name": self.experiment_name,
                    "mlflow_tracking_uri": self.uri(),
                    "extra_tags": {"finetune_assets.last_step": step},
                },
            )
            tracker = MlFlow(init_context)
        except Exception as exc:
            raise TrackingUnavailable(f"MLflow at {redact(self.uri())} is unreachable: {exc}") from exc
        try:
            yield tracker
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run(status="FINISHED")

    # -- registry ------------------------------------------------------------------------------------------

    def champion(self) -> RegisteredVersion | None:
        from mlflow.exceptions import MlflowException

        client = _client(self.uri())
        try:
            version = client.get_model_version_by_alias(self.registered_model_name, CHAMPION_ALIAS)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
                return None
            raise
        return RegisteredVersion(
            self.registered_model_name,
            str(version.version),
            version.tags.get("model_id", ""),
            dict(version.tags),
        )

    def has_registry(self) -> bool:
        """False when the embedded SQLite store does not exist yet (reading must not create it)."""
        return bool(self.tracking_uri) or (Path(self.state_dir).resolve() / "mlflow.db").is_file()

    def find_version(self, model_id: str) -> RegisteredVersion | None:
        """The registry version registered for `model_id` (tag `model_id`), or None."""
        client = _client(self.uri())
        name = self.registered_model_name
        found = client.search_model_versions(f"name='{name}' and tags.model_id='{model_id}'")
        # search results may omit aliases: read the version itself
        return self.get_version(str(found[0].version)) if found else None

    def get_version(self, version: str) -> RegisteredVersion | None:
        """Version `version` (a number as text) or alias (e.g. `champion`) of the registered model, or None."""
        from mlflow.exceptions import MlflowException

        client = _client(self.uri())
        try:
            if version.isdigit():
                found = client.get_model_version(self.registered_model_name, version)
            else:
                found = client.get_model_version_by_alias(self.registered_model_name, version)
        except MlflowException:
            return None
        return _registered(self.registered_model_name, found)

    def register(self, *, model_id: str, source: str, run_id: str | None, tags: Mapping[str, str]) -> RegisteredVersion:
        """Register `model_id` once: a retry finds the version it already created (tag `model_id`)."""
        from mlflow.exceptions import MlflowException

        client = _client(self.uri())
        name = self.registered_model_name
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Post writer promoted by finetune-assets")
        existing = client.search_model_versions(f"name='{name}' and tags.model_id='{model_id}'")
        if existing:
            version = existing[0]
            for key, value in tags.items():
                client.set_model_version_tag(name, version.version, key, value)
        else:
            version = client.create_model_version(name, source, run_id=run_id, tags={"model_id": model_id, **tags})
        merged = {**dict(version.tags or {}), "model_id": model_id, **tags}
        return RegisteredVersion(name, str(version.version), model_id, merged)

    def promote(self, version: RegisteredVersion, previous: RegisteredVersion | None, previous_id: str) -> None:
        """Move the `champion` alias; the version remembers what it replaced, for rollback."""
        client = _client(self.uri())
        client.set_model_version_tag(version.name, version.version, "previous_champion", previous_id)
        if previous is not None:
            client.set_model_version_tag(version.name, version.version, "previous_champion_version", previous.version)
        client.set_registered_model_alias(version.name, CHAMPION_ALIAS, version.version)
