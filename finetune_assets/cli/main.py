"""`finetune-assets`: seed the demo world, run the demo cycle, list a dataset's posts, render Kubernetes manifests.

User mistakes (a bad config, a bad argument) print one line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_assets.cli import db as db_cli
from finetune_assets.deployment.manifests import DEFAULT_STATE_SIZE, render
from finetune_assets.deployment.manifests import PARTS as K8S_PARTS
from finetune_assets.errors import FinetuneAssetsError
from finetune_assets.settings import ConfigError, Settings, config_path, load_settings

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from finetune_assets.resources.tracking import TrackingResource
    from finetune_assets.store.platform import PlatformStore

DESCRIPTION = """\
finetune-assets turns engagement data into better models every week, safely: it collects the posts that
performed, fine-tunes a candidate, evaluates it against the model in production, A/B tests it and promotes
the winner in MLflow — every step a Dagster asset (open the UI with `make dev`).

The demo world is SIMULATED: its users, posts and A/B traffic come from a simulated audience, a demo
stand-in for real users. Settings come from pipeline_config.yaml ($FINETUNE_CONFIG); the database from
$DATABASE_URL (default: a SQLite file under the state directory)."""


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config)) if args.config else load_settings()


def _store(settings: Settings) -> PlatformStore:
    """The configured store (it connects at once): a bad or unreachable `DATABASE_URL` is one line, exit 2 or 1."""
    from finetune_assets.resources.store import StoreResource

    url = os.environ.get("DATABASE_URL") or None
    return StoreResource(
        database_url=url, posts_table=settings.posts_table, state_dir=str(settings.resolved_state_dir())
    ).get()


def _echo(message: str) -> None:
    print(message, flush=True)


def cmd_seed(args: argparse.Namespace) -> int:
    from finetune_assets.cli.demo import DEMO_WORLD, seed_world

    settings = _settings(args)
    world = DEMO_WORLD.__class__(
        **{**DEMO_WORLD.__dict__, "seed": args.seed, "n_posts": args.posts, "n_users": args.users}
    )
    written = seed_world(_store(settings), world, datetime.now(UTC), reset=args.reset)
    _echo(f"seeded {written} simulated posts from {world.n_users} simulated users (demo stand-in for real users)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from finetune_assets.cli.demo import DEMO_SCALE_OVERRIDES

    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    for name, value in DEMO_SCALE_OVERRIDES.items():
        if name not in os.environ:
            os.environ[name] = value
            _echo(f"demo scale: {name}={value} (~450 simulated users cannot show a 5% guardrail margin)")
    settings = _settings(args)
    if args.config:
        os.environ["FINETUNE_CONFIG"] = str(Path(args.config).resolve())
    from finetune_assets.cli.demo import run_demo

    return run_demo(settings, progress=_echo)


def cmd_posts(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = _store(settings)
    if store.get_dataset(args.dataset_id) is None:
        print(
            f"dataset {args.dataset_id!r} not found (dataset ids look like ds-2026-11-15-1a2b3c4d5e)",
            file=sys.stderr,
        )
        return 2
    rows = store.ledger_posts(args.dataset_id, role=args.role)
    for post_id, role, reason in rows:
        print(f"{post_id}\t{role}\t{reason or ''}")
    return 0


class CliError(FinetuneAssetsError, RuntimeError):
    """A user-facing problem (no Dagster instance, unknown model): printed as one line, exit 1."""


@contextmanager
def _dagster_instance() -> Iterator[tuple[DagsterInstance, str]]:
    """The instance `make demo` / `make dev` use: $DAGSTER_HOME, else ./.dagster_home. Never created here."""
    import dagster as dg

    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    if not home.is_dir():
        source = "DAGSTER_HOME" if os.environ.get("DAGSTER_HOME") else "the default ./.dagster_home"
        raise CliError(
            f"no Dagster instance at {home} ({source}): run `make demo` first, or set DAGSTER_HOME to the "
            "instance `make dev` serves"
        )
    dagster_log = logging.getLogger("dagster")
    level = dagster_log.level
    dagster_log.setLevel(logging.ERROR)  # no "no dagster.yaml, using defaults" warning: defaults are what we want
    try:
        instance = dg.DagsterInstance.from_config(str(home))
    finally:
        dagster_log.setLevel(level)
    with instance:
        yield instance, str(home)


def _tracking(settings: Settings) -> TrackingResource:
    from finetune_assets.resources.tracking import TrackingResource

    return TrackingResource(
        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None,
        experiment_name=settings.tracking.experiment_name,
        registered_model_name=settings.tracking.registered_model_name,
        state_dir=str(settings.resolved_state_dir()),
    )


def cmd_lineage(args: argparse.Namespace) -> int:
    from finetune_assets.cli.lineage import format_lineage, gather_lineage

    settings = _settings(args)
    with _dagster_instance() as (instance, where):
        lineage = gather_lineage(
            args.model,
            settings=settings,
            store=_store(settings),
            tracking=_tracking(settings),
            instance=instance,
            instance_location=where,
        )
    print(json.dumps(lineage, indent=2) if args.json else format_lineage(lineage))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from finetune_assets.cli.status import format_status, gather_status

    settings = _settings(args)
    with _dagster_instance() as (instance, where):
        status = gather_status(
            settings=settings, store=_store(settings), instance=instance, now=datetime.now(UTC), instance_location=where
        )
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_ramp(args: argparse.Namespace) -> int:
    from finetune_assets.experiments.runtime.lifecycle import publish_routing, ramp_experiment
    from finetune_assets.resources.cache import RedisResource

    settings = _settings(args)
    store = _store(settings)
    try:
        experiment = ramp_experiment(store, args.experiment_id, args.coverage)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    published = publish_routing(RedisResource(url=os.environ.get("REDIS_URL")), store, settings.base_model, _echo)
    _echo(
        f"experiment {experiment.experiment_id}: coverage {experiment.coverage:.0%} of users, split "
        f"{experiment.split:.0%} to the candidate (routers: "
        + ("published to Redis)" if published else "read SQL within their refresh interval)")
    )
    return 0


def cmd_k8s_render(args: argparse.Namespace) -> int:
    manifests = render(
        args.parts or K8S_PARTS,
        config_path=Path(args.config) if args.config else config_path(),
        namespace=args.namespace,
        state_size=args.state_size,
        storage_class=args.storage_class,
    )
    print(manifests, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune-assets", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="path to pipeline_config.yaml (default: $FINETUNE_CONFIG or the repo's)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seed = commands.add_parser(
        "seed",
        help="write the simulated demo world (users, posts, engagement) into the configured database",
        description="Write the SIMULATED demo world into generated_posts: posts with impressions and engagements "
        "drawn from a hidden engagement model (a demo stand-in for real users), ~2%% of them malformed on purpose.",
    )
    seed.add_argument("--posts", type=_positive, default=3000, help="historical posts to write (default 3000)")
    seed.add_argument("--users", type=_positive, default=1000, help="simulated users (default 1000)")
    seed.add_argument("--seed", type=int, default=7, help="random seed: the same seed gives the same world")
    seed.add_argument("--reset", action="store_true", help="replace the posts already in the table")
    seed.set_defaults(func=cmd_seed)

    demo = commands.add_parser(
        "demo",
        help="seed the demo world and run one whole cycle through a persistent Dagster instance",
        description="Seed the simulated world, materialize the whole asset graph once in the Dagster instance at "
        "$DAGSTER_HOME (so `make dev` shows the runs and lineage), let the simulated audience produce 168 h of "
        "A/B traffic, decide, promote, and print a summary.",
    )
    demo.set_defaults(func=cmd_demo)

    posts = commands.add_parser("posts", help="list the posts a dataset used, held out or rejected (with reasons)")
    posts.add_argument("dataset_id", help="a dataset id, e.g. from training_data's metadata")
    posts.add_argument("--role", choices=["train", "holdout", "rejected"], help="only this role")
    posts.set_defaults(func=cmd_posts)

    lineage = commands.add_parser(
        "lineage",
        help="a model's chain back to its posts: registry, A/B decision, evaluation, fine-tune, training data",
        description="Print the lineage of the model in production, or of MODEL: its MLflow registry version and "
        "aliases, the A/B decision and lift, the evaluation scores, the fine-tune job, the training partition, the "
        "dataset hash, how many posts it trained on and how to list them. Each step names the Dagster run that "
        "materialized it (instance: $DAGSTER_HOME, default ./.dagster_home).",
    )
    lineage.add_argument(
        "model",
        nargs="?",
        help="a fine-tuned model id, a registry version (3 or v3) or alias (champion); "
        "default: the model in production",
    )
    lineage.add_argument("--json", action="store_true", help="print JSON for machines")
    lineage.set_defaults(func=cmd_lineage)

    ramp = commands.add_parser(
        "ramp",
        help="enroll more users in the running experiment (coverage only goes up; nobody changes arm)",
        description="Raise the running experiment's coverage, e.g. from a 5%% smoke test to everyone. Enrolled users "
        "keep their arm. Lowering coverage or changing the split mid-test is refused: start a new experiment.",
    )
    ramp.add_argument("experiment_id", help="the running experiment, e.g. from `finetune-assets status`")
    ramp.add_argument("--coverage", type=_share, required=True, help="share of users enrolled, in (0, 1]")
    ramp.set_defaults(func=cmd_ramp)

    status = commands.add_parser(
        "status",
        help="what is going on now: runs, the experiment and its hours left, last training, waiting examples, "
        "next schedule tick",
        description="Runs in progress, the running experiment and its hours left, the last training, the qualifying "
        "examples that wait, the model in production, the next tick of weekly_finetune_schedule and whether the "
        "schedule and sensors are on (instance: $DAGSTER_HOME, default ./.dagster_home).",
    )
    status.add_argument("--json", action="store_true", help="print JSON for machines")
    status.set_defaults(func=cmd_status)

    k8s = commands.add_parser("k8s", help="Kubernetes deployment helpers (docs/deployment.md)")
    k8s_commands = k8s.add_subparsers(dest="k8s_command", required=True, metavar="COMMAND")
    render_parser = k8s_commands.add_parser(
        "render",
        help="print the manifests to apply next to the Dagster Helm chart",
        description="Print, as one YAML stream for `kubectl apply -f -`, what the Helm chart does not create: the "
        "pipeline config ConfigMap (from --config / $FINETUNE_CONFIG, validated first), the shared state volume, "
        "the PrometheusRule and the Grafana dashboard ConfigMap (from deploy/). Secrets are never rendered.",
    )
    render_parser.add_argument(
        "parts", nargs="*", type=_k8s_part, metavar="PART", help=f"only these: {', '.join(K8S_PARTS)} (default all)"
    )
    render_parser.add_argument(
        "--namespace", type=_dns_label, help="set metadata.namespace (default: leave it to kubectl -n)"
    )
    render_parser.add_argument(
        "--state-size",
        type=_storage_quantity,
        default=DEFAULT_STATE_SIZE,
        help=f"size of the state volume (default {DEFAULT_STATE_SIZE})",
    )
    render_parser.add_argument(
        "--storage-class", type=_dns_subdomain, help="a ReadWriteMany storage class for the state volume"
    )
    render_parser.set_defaults(func=cmd_k8s_render)
    db_cli.register(commands)
    return parser


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer")
    return number


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _k8s_part(value: str) -> str:
    if value not in K8S_PARTS:
        raise argparse.ArgumentTypeError(f"{value!r}: expected one of {', '.join(K8S_PARTS)}")
    return value


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
        )
    return value


def _dns_subdomain(value: str) -> str:
    if not _DNS_SUBDOMAIN.match(value):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a Kubernetes object name such as efs-sc")
    return value


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 < share <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a share of users in (0, 1], such as 0.5")
    return share


def _storage_quantity(value: str) -> str:
    from kubernetes.utils.quantity import parse_quantity

    try:
        size = parse_quantity(value)
    except ValueError:
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive Kubernetes quantity such as 50Gi")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        code = int(args.func(args))
    except ConfigError as exc:  # a bad pipeline_config.yaml, override or service URL
        print(f"finetune-assets: {exc}", file=sys.stderr)
        return 2
    except FinetuneAssetsError as exc:  # raised on purpose (unreachable database, refused action): one line
        print(f"finetune-assets: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    if args.command == "demo":
        _echo(f"done in {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
