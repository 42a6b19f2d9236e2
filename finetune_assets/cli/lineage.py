"""`finetune-assets lineage [MODEL]`: a model's chain back to the posts it learned from.

Three sources, each for what it owns:
- the SQL store names the model's cycle, dataset and experiment, and says what serves traffic now (routing);
- the Dagster instance holds the chain itself: for each asset, the materialization of that cycle's partition
  that produced this model (run id, time, metadata — what the UI shows);
- the MLflow registry holds the registered version, its aliases (`champion`) and its lineage tags.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.reporting.formatting import iso_seconds, utc_minute

if TYPE_CHECKING:
    import dagster as dg

    from finetune_assets.resources.tracking import RegisteredVersion, TrackingResource
    from finetune_assets.settings import Settings
    from finetune_assets.store.platform import PlatformStore

CHAIN = (
    # asset, metadata key that identifies this model's materialization, which identity it is compared with
    ("production_model", "candidate_model", "model_id"),
    ("ab_test_outcome", "experiment_id", "experiment_id"),
    ("ab_test", "experiment_id", "experiment_id"),
    ("evaluation_scores", "candidate_model", "model_id"),
    ("fine_tuned_model", "model_id", "model_id"),
    ("training_data", "dataset_id", "dataset_id"),
)
MATERIALIZATIONS_SCANNED = 50
"""Per asset and partition: a cycle rematerialized more often than this shows its newest ones only."""


class LineageError(FinetuneAssetsError, RuntimeError):
    """The model cannot be found: the message names the input and what was expected."""


def _plain(value: Any) -> Any:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def find_materialization(
    instance: dg.DagsterInstance, asset: str, partition: str, key: str, value: str
) -> dict[str, Any] | None:
    """The newest materialization of `asset`/`partition` whose metadata `key` equals `value`, as plain data
    (Markdown values, which hold tables and plots, are left out)."""
    import dagster as dg

    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]),
        limit=MATERIALIZATIONS_SCANNED,
    )
    for record in result.records:  # newest first
        materialization = record.asset_materialization
        if materialization is None:
            continue
        entry = materialization.metadata.get(key)
        if entry is None or str(entry.value) != value:
            continue
        metadata = {
            name: _plain(item.value)
            for name, item in materialization.metadata.items()
            if not isinstance(item, dg.MarkdownMetadataValue)
        }
        return {
            "run_id": record.run_id,
            "materialized_at": iso_seconds(datetime.fromtimestamp(record.timestamp, UTC)),
            "partition": materialization.partition,
            "metadata": metadata,
        }
    return None


def _registry(version: RegisteredVersion | None) -> dict[str, Any] | None:
    if version is None:
        return None
    return {
        "name": version.name,
        "version": version.version,
        "aliases": list(version.aliases),
        "source": version.source,
        "mlflow_run_id": version.run_id,
        "tags": dict(sorted(version.tags.items())),
    }


def resolve_model(
    model: str | None, *, settings: Settings, store: PlatformStore, tracking: TrackingResource
) -> tuple[str, RegisteredVersion | None]:
    """MODEL as typed (a model id, a registry version `3`/`v3`, or an alias such as `champion`), or the model
    in production when None, as (model id, registry version if one was looked up)."""
    if model is None:
        return store.production_model(default=settings.base_model), None
    if store.get_model(model) is not None or model == settings.base_model:
        return model, None
    token = model[1:] if re.fullmatch(r"v\d+", model) else model
    version = tracking.get_version(token) if tracking.has_registry() and token else None
    if version is not None and version.model_id:
        return version.model_id, version
    known = ", ".join(m.model_id for m in store.recent_models(3)) or "none yet (run `make demo`)"
    raise LineageError(
        f"model {model!r} not found: expected a fine-tuned model id, a version of the registered model "
        f"{tracking.registered_model_name!r} (e.g. 3 or v3) or one of its aliases (e.g. champion); "
        f"newest models: {known}"
    )


def gather_lineage(
    model: str | None,
    *,
    settings: Settings,
    store: PlatformStore,
    tracking: TrackingResource,
    instance: dg.DagsterInstance,
    instance_location: str,
) -> dict[str, Any]:
    """Everything `lineage` prints, as JSON-ready data."""
    model_id, version = resolve_model(model, settings=settings, store=store, tracking=tracking)
    in_production = store.production_model(default=settings.base_model)
    record = store.get_model(model_id)
    lineage: dict[str, Any] = {
        "model_id": model_id,
        "asked_for": model or "the model in production",
        "in_production": model_id == in_production,
        "model_in_production": in_production,
        "fine_tuned": record is not None,
        "dagster_instance": instance_location,
    }
    if record is None:  # the configured base model: nothing here trained it
        serving = (
            "it serves traffic because no candidate has been promoted yet"
            if model_id == in_production
            else f"{in_production} serves traffic now"
        )
        lineage["note"] = (
            f"{model_id} is the configured base model (base_model in pipeline_config.yaml): finetune-assets did "
            f"not train it, so it has no lineage here; {serving}"
        )
        return lineage

    partition = record.partition_key
    dataset = store.get_dataset(record.dataset_id)
    experiment = store.experiment_of(model_id)
    evaluation = store.evaluation_of(model_id)
    promotion = store.promotion_of(experiment.experiment_id) if experiment else None
    if version is None and tracking.has_registry():
        version = tracking.find_version(model_id)
    identity = {
        "model_id": model_id,
        "experiment_id": experiment.experiment_id if experiment else None,
        "dataset_id": record.dataset_id,
    }
    chain = {}
    for asset, key, which in CHAIN:
        wanted = identity[which]
        chain[asset] = find_materialization(instance, asset, partition, key, wanted) if wanted else None
    list_posts = f"finetune-assets posts {record.dataset_id}"
    training = record.details
    result = experiment.details.decision if experiment else None
    lineage.update(
        {
            "partition": partition,
            "registry": _registry(version),
            "promotion": None
            if promotion is None
            else {
                "promoted": promotion.promoted,
                "previous_model": promotion.previous_model_id,
                "registry_version": promotion.registry_version,
                "at": iso_seconds(promotion.created_at),
            },
            "experiment": None
            if experiment is None
            else {
                "experiment_id": experiment.experiment_id,
                "status": experiment.status,
                "decision": experiment.decision,
                "reason": experiment.reason,
                "control_model": experiment.control_model,
                "started_at": iso_seconds(experiment.started_at),
                "ends_at": iso_seconds(experiment.ends_at),
                "split": experiment.split,
                "salt": experiment.salt,
                "lift": result.lift if result else None,
                "ci_low": result.ci_low if result else None,
                "ci_high": result.ci_high if result else None,
                "p_value": result.p_value if result else None,
                "srm_p_value": result.srm_p_value if result else None,
                "users": dict(result.users) if result else None,
                "traffic_source": experiment.details.traffic_source,
            },
            "evaluation": None
            if evaluation is None
            else {
                "passed": evaluation.passed,
                "champion_model": evaluation.champion_model,
                "candidate": evaluation.scores.candidate.as_dict(),
                "champion": evaluation.scores.champion.as_dict(),
                "n_holdout": evaluation.scores.n_holdout,
            },
            "fine_tune": {
                "job_id": record.job_id,
                "backend": record.backend,
                "base_model": record.base_model,
                "status": record.status,
                "steps": training.metrics.get("steps"),
                "final_train_loss": training.metrics.get("final_train_loss"),
                "final_validation_loss": training.metrics.get("final_validation_loss"),
                "mlflow_run_id": training.mlflow_run_id,
                "adapter": training.artifact_uri,
            },
            "training_data": None
            if dataset is None
            else {
                "dataset_id": dataset.dataset_id,
                "dataset_hash": dataset.dataset_hash,
                "status": dataset.status,
                "n_train": dataset.n_train,
                "n_holdout": dataset.n_holdout,
                "n_rejected": dataset.n_rejected,
                "rejected_by_reason": dict(dataset.details.rejected_by_reason),
            },
            "posts": {"table": settings.posts_table, "list_command": list_posts},
            "dagster": chain,
        }
    )
    return lineage


# -- text ----------------------------------------------------------------------------------------------------------


def _short(run_id: str | None) -> str:
    return run_id.split("-")[0] if run_id else "?"


def _pct(value: Any, signed: bool = False) -> str:
    return "–" if value is None else (f"{value:+.1%}" if signed else f"{value:.2%}")


def _tag_pct(tag: str | None) -> str:
    try:
        return f"{float(tag or ''):+.1%}"
    except ValueError:
        return tag or "?"


def _num(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def format_lineage(lineage: Mapping[str, Any]) -> str:
    """The chain as a person reads it: one block per asset, newest first, each with the run that made it."""
    model_id = lineage["model_id"]
    if not lineage["fine_tuned"]:
        return f"{model_id}\n  {lineage['note']}."
    status = "IN PRODUCTION" if lineage["in_production"] else f"not in production ({lineage['model_in_production']} is)"
    lines = [f"{model_id}  [{status}]", f"cycle {lineage['partition']}", ""]
    chain = lineage["dagster"]
    width = 19

    def block(asset: str, *texts: str) -> None:
        found = chain.get(asset)
        where = (
            f"run {_short(found['run_id'])}, {utc_minute(found['materialized_at'])}"
            if found
            else "no materialization of this model in the Dagster instance"
        )
        lines.append(f"{asset:<{width}}{texts[0] if texts else ''}")
        lines.extend(f"{'':<{width}}{text}" for text in texts[1:])
        lines.append(f"{'':<{width}}↳ {where}")

    registry, promotion, experiment = lineage["registry"], lineage["promotion"], lineage["experiment"]
    if registry is not None:
        aliases = ", ".join(registry["aliases"]) or "no alias"
        reg = f"registry {registry['name']} v{registry['version']} ({aliases})"
        tags = registry["tags"]
        if "previous_champion" in tags:
            reg += f", replaced {tags['previous_champion']}"
        ab = f"registry tags: ab_decision {tags.get('ab_decision', '?')}, ab_lift {_tag_pct(tags.get('ab_lift'))}"
    else:
        reg, ab = "not registered in MLflow", ""
    routed = (
        "promoted: serves traffic"
        if promotion and promotion["promoted"]
        else "kept the previous model"
        if promotion
        else "no routing decision"
    )
    block("production_model", reg, *(t for t in (ab, routed) if t))
    if experiment is not None:
        users = experiment.get("users") or {}
        block(
            "ab_test_outcome",
            f"{str(experiment['decision'] or experiment['status']).upper()}: lift {_pct(experiment['lift'], True)} "
            f"[{_pct(experiment['ci_low'], True)}, {_pct(experiment['ci_high'], True)}], "
            f"p = {_num(experiment['p_value'], '.2g')}, SRM p = {_num(experiment['srm_p_value'], '.3f')}",
            f"users: control {users.get('control', '?')}, treatment {users.get('treatment', '?')}",
        )
        block(
            "ab_test",
            f"{experiment['experiment_id']} vs {experiment['control_model']}, split {experiment['split']:.0%}, "
            f"salt {experiment['salt']}",
            f"window {utc_minute(experiment['started_at'])} → {utc_minute(experiment['ends_at'])}"
            + (f"; traffic: {experiment['traffic_source']}" if experiment.get("traffic_source") else ""),
        )
    else:
        block("ab_test_outcome", "no experiment served this model")
    evaluation = lineage["evaluation"]
    if evaluation is not None:
        cand, champ = evaluation["candidate"] or {}, evaluation["champion"] or {}
        block(
            "evaluation_scores",
            f"held-out loss {_num(cand.get('heldout_loss'), '.4f')} vs {_num(champ.get('heldout_loss'), '.4f')} "
            f"({evaluation['champion_model']}); predicted engagement {_pct(cand.get('predicted_engagement'))} vs "
            f"{_pct(champ.get('predicted_engagement'))}",
            f"{'passed' if evaluation['passed'] else 'FAILED'} on {evaluation['n_holdout']} held-out prompts",
        )
    else:
        block("evaluation_scores", "not evaluated")
    tune = lineage["fine_tune"]
    losses = f"{tune['steps']:.0f} steps" if tune["steps"] is not None else ""
    if tune["final_train_loss"] is not None:
        losses += f", final loss {tune['final_train_loss']:.3f}"
        if tune["final_validation_loss"] is not None:
            losses += f", validation loss {tune['final_validation_loss']:.3f}"
    block(
        "fine_tuned_model",
        f"job {tune['job_id']} ({tune['backend']} backend, base {tune['base_model']}): {tune['status']}",
        *(t for t in (losses.lstrip(", "),) if t),
        f"MLflow run {tune['mlflow_run_id']}" if tune["mlflow_run_id"] else "no MLflow run recorded",
    )
    data = lineage["training_data"]
    if data is not None:
        block(
            "training_data",
            f"partition {lineage['partition']}, dataset {data['dataset_id']} ({data['status']})",
            f"hash {data['dataset_hash']}",
            f"{data['n_train']} posts trained on, {data['n_holdout']} held out, {data['n_rejected']} rejected",
        )
    posts = lineage["posts"]
    lines.append(f"{'generated_posts':<{width}}the app's table {posts['table']} (external, read only)")
    lines.append(f"{'':<{width}}list the posts:  {posts['list_command']}")
    lines.append("")
    lines.append(f"Dagster instance {lineage['dagster_instance']}")
    return "\n".join(lines)
