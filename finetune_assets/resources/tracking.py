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

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.service_urls import check_tracking_uri, env_value

CHAMPION_ALIAS = "champion"


class TrackingUnavailable(FinetuneAssetsError, dg.Failure, RuntimeError):
    """The MLflow server cannot be reached: the message says which URI and what to check.

    A `dg.Failure`, so the step fails with this description rather than a client library's traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(description=message)


def _unreachable(exc: BaseException) -> BaseException | None:
    """The connection-level error (refused, reset, timed out) behind `exc`, if that is what it is."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    found: BaseException | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
            found = current
        current = current.__cause__ or current.__context__
    return found


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


_ARTIFACT_SCHEMES = frozenset(
    {"runs", "models", "mlflow-artifacts", "s3", "gs", "wasbs", "abfss", "hdfs", "dbfs", "http", "https", "ftp", "sftp"}
)


def _server_source(client: Any, source: str, run_id: str | None) -> str:
    """A version source a tracking server accepts: it refuses local paths outside the run's artifacts and
    bare model ids (`ft:...`). A local directory the run logged becomes `runs:/<run>/<dir>`; anything else
    the run's artifact root (the model id stays in the `model_id` tag)."""
    parts = urlsplit(source)
    if parts.scheme in _ARTIFACT_SCHEMES or run_id is None:
        return source
    if parts.scheme in ("", "file"):
        name = Path(parts.path if parts.scheme == "file" else source).name
        if name and any(Path(a.path).name == name for a in client.list_artifacts(run_id)):
            return f"runs:/{run_id}/{name}"
    return str(client.get_run(run_id).info.artifact_uri)


@contextmanager
def _reaching(uri: str, doing: str) -> Iterator[None]:
    """Turn "the server is not there" into one clear `TrackingUnavailable`; other errors pass unchanged."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as exc:
        cause = _unreachable(exc)
        if cause is None:
            raise
        raise TrackingUnavailable(
            f"MLflow tracking server at {redact(uri)} is unreachable while {doing} ({type(cause).__name__}): "
            "check that it is up and that MLFLOW_TRACKING_URI points at it, then retry the run; the retry "
            "reuses anything already registered (never a second registry version)"
        ) from exc


class TrackingResource(dg.ConfigurableResource):
    """`tracking_uri` comes from `MLFLOW_TRACKING_URI`; unset, a SQLite store under the state directory."""

    tracking_uri: str | None = None
    experiment_name: str = "finetune-assets"
    registered_model_name: str = "post-writer"
    state_dir: str = ".state"

    def uri(self) -> str:
        """`tracking_uri` (checked: a bad one is one `ServiceUrlError` line), else the state dir's SQLite store."""
        uri = env_value(self.tracking_uri)
        if uri:
            return check_tracking_uri(uri)
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
            with _reaching(self.uri(), f"reading the {CHAMPION_ALIAS!r} alias"):
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
        with _reaching(self.uri(), f"looking up {model_id} in the registry"):
            found = client.search_model_versions(f"name='{name}' and tags.model_id='{model_id}'")
        # search results may omit aliases: read the version itself
        return self.get_version(str(found[0].version)) if found else None

    def get_version(self, version: str) -> RegisteredVersion | None:
        """Version `version` (a number as text) or alias (e.g. `champion`) of the registered model, or None."""
        from mlflow.exceptions import MlflowException

        client = _client(self.uri())
        try:
            with _reaching(self.uri(), f"reading version {version!r} of {self.registered_model_name!r}"):
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
        with _reaching(self.uri(), f"registering {model_id} as {name!r}"):
            try:
                client.get_registered_model(name)
            except MlflowException as exc:
                if _unreachable(exc) is not None:
                    raise
                client.create_registered_model(name, description="Post writer promoted by finetune-assets")
            existing = client.search_model_versions(f"name='{name}' and tags.model_id='{model_id}'")
            if existing:
                version = existing[0]
                for key, value in tags.items():
                    client.set_model_version_tag(name, version.version, key, value)
            else:
                if urlsplit(self.uri()).scheme in ("http", "https"):
                    source = _server_source(client, source, run_id)
                version = client.create_model_version(name, source, run_id=run_id, tags={"model_id": model_id, **tags})
        merged = {**dict(version.tags or {}), "model_id": model_id, **tags}
        return RegisteredVersion(name, str(version.version), model_id, merged)

    def promote(self, version: RegisteredVersion, previous: RegisteredVersion | None, previous_id: str) -> None:
        """Move the `champion` alias; the version remembers what it replaced, for rollback.

        Idempotent: a retried promotion whose alias already moved (`previous` is this version) leaves the
        rollback tags the first attempt wrote."""
        client = _client(self.uri())
        with _reaching(self.uri(), f"moving {CHAMPION_ALIAS!r} to {version.name} v{version.version}"):
            if previous is None or previous.version != version.version:
                client.set_model_version_tag(version.name, version.version, "previous_champion", previous_id)
                if previous is not None:
                    client.set_model_version_tag(
                        version.name, version.version, "previous_champion_version", previous.version
                    )
            client.set_registered_model_alias(version.name, CHAMPION_ALIAS, version.version)
