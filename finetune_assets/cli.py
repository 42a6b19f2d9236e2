"""`finetune-assets`: seed the demo world, run the demo cycle, list a dataset's posts.

User mistakes (a bad config, a bad argument) print one line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_assets.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from finetune_assets.resources.store import PlatformStore

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
    from finetune_assets.resources.store import StoreResource

    url = os.environ.get("DATABASE_URL")
    return StoreResource(
        database_url=url, posts_table=settings.posts_table, state_dir=str(settings.resolved_state_dir())
    ).get()


def _echo(message: str) -> None:
    print(message, flush=True)


def cmd_seed(args: argparse.Namespace) -> int:
    from finetune_assets.demo import DEMO_WORLD, seed_world

    settings = _settings(args)
    world = DEMO_WORLD.__class__(
        **{**DEMO_WORLD.__dict__, "seed": args.seed, "n_posts": args.posts, "n_users": args.users}
    )
    written = seed_world(_store(settings), world, datetime.now(UTC), reset=args.reset)
    _echo(f"seeded {written} simulated posts from {world.n_users} simulated users (demo stand-in for real users)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    settings = _settings(args)
    if args.config:
        os.environ["FINETUNE_CONFIG"] = str(Path(args.config).resolve())
    from finetune_assets.demo import run_demo

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
    return parser


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer")
    return number


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        code = int(args.func(args))
    except ConfigError as exc:
        print(f"finetune-assets: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from finetune_assets.demo import DemoError

        if isinstance(exc, DemoError):
            print(f"finetune-assets: {exc}", file=sys.stderr)
            return 1
        raise
    if args.command == "demo":
        _echo(f"done in {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
