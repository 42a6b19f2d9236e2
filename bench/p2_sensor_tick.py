"""P2: a `training_data_sensor` tick at N posts in Postgres <= 200 ms and <= 2x the bare indexed count query.

A throw-away database (`finetune_p2_<pid>`) on 127.0.0.1:5432 is seeded like P1 (bench/p1_collection.py: COPY,
a fifth A/B traffic, the older half's qualifying posts already in an earlier trained dataset) and dropped at
the end, also on failure. Measured warm, alternating, median of `--repeats`:

* ours — the sensor evaluated as the daemon would, `training_data_sensor(build_sensor_context(resources=...,
  instance=...))` with the code location's resources (settings read once per process, the store's pooled
  engine): Dagster's resource setup, the qualifying-and-untaken count, the running-experiment check, the run
  request;
* peer — the bare indexed count any such sensor must at least pay, through psycopg2: the qualifying organic
  posts, `SELECT count(*), max(post_id) ... WHERE experiment_id IS NULL AND <qualifying>` (no ledger), with
  the same rate expression, so it can use the same index;
* and, to show where the time goes, the store's own count statement (with the ledger anti-join) run bare.

Then the same with the index the store had before this bench, `ix_<table>_organic (experiment_id, post_id)`,
in place of `ix_<table>_organic_rate` (the partial expression index it led to): before and after from one run
(the query is today's in both; before, it also compared in exact `numeric`, slower still). Writes its lines into
docs/performance.md (section `p2_sensor_tick`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg2
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from p1_collection import NOW, seed, text_pool
from timing import Report, timed, write_section  # bench/timing.py

from finetune_assets.resources.clock import ClockResource
from finetune_assets.resources.config import PipelineConfigResource
from finetune_assets.resources.store import StoreResource
from finetune_assets.sensors import training_data_sensor
from finetune_assets.settings import get_settings
from finetune_assets.store.schema import engagement_rate


def measure(url: str, dsn: str, repeats: int, label: str, out: Report) -> None:
    settings = get_settings()  # what PipelineConfigResource() reads
    store_resource = StoreResource(database_url=url)
    resources = {
        "pipeline": PipelineConfigResource(),  # as the code location has it: settings read once per process
        "store": store_resource,
        "clock": ClockResource(fixed_now=NOW.isoformat()),
    }
    store = store_resource.get()
    captured: list[str] = []

    def capture(_conn: Any, cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "count(" in statement:
            captured.append(cursor.mogrify(statement, parameters).decode())

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    instance = dg.DagsterInstance.ephemeral()  # the daemon's instance exists before the tick; built once here
    first = training_data_sensor(dg.build_sensor_context(resources=resources, instance=instance))
    sa.event.remove(store.engine, "before_cursor_execute", capture)
    ours_sql = captured[-1]
    p = store.posts.c
    bare = sa.select(sa.func.count(), sa.func.max(p.post_id)).where(
        p.experiment_id.is_(None),
        p.impressions >= settings.min_impressions,
        engagement_rate(p) >= sa.cast(sa.literal(settings.engagement_threshold), sa.Float),
    )
    bare_sql = str(bare.compile(store.engine, compile_kwargs={"literal_binds": True}))
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cursor = conn.cursor()

    def run_sql(sql: str) -> Callable[[], object]:
        def run() -> object:
            cursor.execute(sql)
            return cursor.fetchall()

        return run

    medians = timed(
        {
            "tick": lambda: training_data_sensor(dg.build_sensor_context(resources=resources, instance=instance)),
            "bare": run_sql(bare_sql),
            "ours_sql": run_sql(ours_sql),
        },
        repeats,
    )
    cursor.execute(bare_sql)
    qualifying = cursor.fetchone()[0]  # type: ignore[index]
    plans = {}
    for name, sql in (("bare", bare_sql), ("ours", ours_sql)):
        cursor.execute("EXPLAIN " + sql)
        plans[name] = " / ".join(
            r[0].strip() for r in cursor.fetchall() if any(k in r[0] for k in ("Scan", "Join", "Aggregate"))
        )
    conn.close()
    tick, bare, own = medians["tick"], medians["bare"], medians["ours_sql"]
    outcome = (
        f"run request {first.run_requests[0].run_key}" if isinstance(first, dg.SensorResult) else first.skip_message
    )  # type: ignore[union-attr]
    out(f"[{label}]")
    out(f"  tick outcome: {outcome}; qualifying organic posts (taken or not): {qualifying:,}")
    out(f"  peer: bare indexed count (no ledger), psycopg2:        median {bare * 1000:.1f} ms")
    out(f"  the store's count statement (ledger anti-join), bare: median {own * 1000:.1f} ms")
    out(f"  ours: training_data_sensor tick:                      median {tick * 1000:.1f} ms")
    out(f"  ratio tick / bare count: {tick / bare:.2f}x (goal <= 2x): {'OK' if tick / bare <= 2 else 'MISSED'}; "
        f"tick {tick * 1000:.0f} ms (goal <= 200 ms): {'OK' if tick <= 0.2 else 'MISSED'}")  # fmt: skip
    out(f"  plan, bare: {plans['bare']}")
    out(f"  plan, ours: {plans['ours']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pool", type=int, default=3000)
    args = parser.parse_args()
    out = Report()
    database = f"finetune_p2_{os.getpid()}"
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={database}"
    admin = psycopg2.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {database}")
    try:
        seconds = seed(url, args.posts, text_pool(args.pool))
        out(f"seeded {args.posts:,} posts (COPY, indexes, history, VACUUM ANALYZE) in {seconds:.1f} s")
        measure(url, dsn, args.repeats, "the store's indexes", out)
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("DROP INDEX IF EXISTS ix_generated_posts_organic_rate")
            cur.execute("CREATE INDEX ix_generated_posts_organic ON generated_posts (experiment_id, post_id)")
        measure(url, dsn, args.repeats, "before: ix_generated_posts_organic (experiment_id, post_id) instead", out)
        write_section("p2_sensor_tick", out.lines)
    finally:
        StoreResource(database_url=url).get().engine.dispose()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()
        print(f"dropped database {database}")


if __name__ == "__main__":
    main()
