"""P1: collecting the training data from N posts in Postgres, against COPY of the same filter and pandas.read_sql.

Goals: at 1,000,000 posts the collection takes <= 1.5x `COPY (same filter) TO STDOUT` and is >= 5x
faster than `pandas.read_sql` of the table filtered in pandas; its peak RSS does not grow from 1M to 4M posts.

Per size in `--sizes`, a throw-away database (`finetune_p1_<pid>_<size>`) on 127.0.0.1:5432 (user postgres,
trust auth) is created, seeded with COPY (CSV built from a pool of demo-corpus posts, each completion made
unique), given a history (the qualifying organic posts of the older half are in the ledger of an earlier,
trained dataset, with content hashes) and dropped at the end, also on failure. A fifth of the posts is A/B
traffic of old experiments (never trains).

Measured warm, alternating, median of `--repeats`, each in a transaction that is rolled back (so every
repeat collects from the same state):

* ours — `collect_training_data`, the whole collection transaction the `training_data` asset runs (release the
  partition, pool counts, rate histogram, stream + validate + de-duplicate, write the dataset and its ledger
  rows), with the shipped pipeline_config.yaml (max_examples_per_cycle 5000);
* ours, uncapped — the same with max_examples_per_cycle above the pool: every qualifying post is validated,
  de-duplicated and written to the ledger (one run: it is the slow one);
* stream — `iter_candidate_posts` drained (the rows reach Python as dicts; no validation);
* peer COPY — `COPY (<the exact SELECT the stream sends>) TO STDOUT`, bytes counted and discarded;
* peer pandas — `pandas.read_sql` of the table (and the ledger), filtered in pandas (run `--pandas-repeats`).

Peak RSS: for each size a fresh subprocess imports the package, then runs one collection (`VmHWM`); the
import-only footprint is printed beside it. Writes its lines into docs/performance.md (section `p1_collection`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from timing import Report, timed, write_section  # noqa: E402  (bench/timing.py; scripts run from bench/)

from finetune_assets.assets.training_data import collect_training_data  # noqa: E402
from finetune_assets.settings import Settings, load_settings  # noqa: E402
from finetune_assets.simulation import DemoWorldConfig, generate_corpus  # noqa: E402
from finetune_assets.store.engine import make_engine  # noqa: E402
from finetune_assets.store.platform import PlatformStore  # noqa: E402

PARTITION = "2026-11-15"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
COLUMNS = (
    "post_id, created_at, user_id, model_id, experiment_id, variant, prompt_messages, completion, "
    "impressions, engagements, updated_at"
)


def settings_for(uncapped: bool) -> Settings:
    settings = load_settings(REPO / "pipeline_config.yaml")
    return settings.model_copy(update={"max_examples_per_cycle": 10**9}) if uncapped else settings


# -- seeding ----------------------------------------------------------------------------------------------------


def text_pool(n: int) -> list[tuple[str, str, int, int]]:
    """Demo-corpus posts (with their defects) as CSV-quoted prompt and completion-without-closing-quote."""
    pool = []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="")
    for row in generate_corpus(DemoWorldConfig(seed=21, n_users=2000, n_posts=n), now=NOW):
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([row["prompt_messages"]])
        prompt = buffer.getvalue() or '""'
        completion = row["completion"]
        # A unique tag keeps every completion distinct (no accidental duplicates); None stays NULL.
        pool.append((prompt, "" if completion is None else '"' + completion.replace('"', '""'), row["impressions"],
                     row["engagements"]))  # fmt: skip
    return pool


def seed(url: str, rows: int, pool: list[tuple[str, str, int, int]], chunk: int = 200_000) -> float:
    started = time.perf_counter()
    engine = make_engine(url)
    store = PlatformStore(engine)
    store.create_posts_table()
    for index in store.posts.indexes:  # load first, index after
        index.drop(engine)
    rng = np.random.default_rng(7)
    start = NOW - timedelta(days=365)
    span_s = 365 * 86_400
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for lo in range(0, rows, chunk):
            k = min(chunk, rows - lo)
            picks = rng.integers(0, len(pool), size=k)
            users = rng.integers(0, 50_000, size=k)
            ab = rng.random(size=k) < 0.2
            lines = []
            for j in range(k):
                post_id = lo + j + 1
                prompt, completion, imps, engs = pool[picks[j]]
                created = (start + timedelta(seconds=int(span_s * post_id / rows))).isoformat()
                if completion:
                    completion = f'{completion} #{post_id}"'
                experiment = f"exp-old-{post_id % 7}," + ("control" if users[j] % 2 else "treatment") if ab[j] else ","
                lines.append(
                    f"{post_id},{created},u{users[j]},base-model,{experiment},{prompt},{completion},{imps},{engs},{created}\n"
                )
            cursor.copy_expert(
                f"COPY generated_posts ({COLUMNS}) FROM STDIN WITH (FORMAT csv)", io.StringIO("".join(lines))
            )
        raw.commit()
    finally:
        raw.close()
    for index in store.posts.indexes:
        index.create(engine)
    # History: earlier cycles trained on the qualifying organic posts of the older half.
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO ft_datasets VALUES ('ds-history', '2026-01-04', 'h', 'trained', 0, 0, 0, now(), '{}')")
        )
        conn.execute(
            sa.text(
                "INSERT INTO ft_example_ledger (post_id, dataset_id, role, reason, content_hash) "
                "SELECT post_id, 'ds-history', 'train', NULL, md5(post_id::text) || md5(completion) "
                "FROM generated_posts WHERE experiment_id IS NULL AND impressions >= 100 "
                "AND engagements >= 0.06 * impressions AND post_id <= :half"
            ),
            {"half": rows // 2},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    return time.perf_counter() - started


# -- what is measured -------------------------------------------------------------------------------------------


def collect_once(store: PlatformStore, settings: Settings) -> tuple[int, int, int]:
    """One whole collection transaction, rolled back: returns (train, holdout, rejected)."""
    with store.engine.connect() as conn:
        transaction = conn.begin()
        try:
            collected = collect_training_data(conn, store, settings, PARTITION)
        finally:
            transaction.rollback()
    s = collected.selection
    return len(s.train), len(s.holdout), len(s.rejected)


def stream_once(store: PlatformStore, settings: Settings) -> int:
    with store.engine.connect() as conn:
        return sum(1 for _ in store.iter_candidate_posts(conn, settings.min_impressions, settings.engagement_threshold))


def stream_sql(store: PlatformStore, settings: Settings) -> str:
    """The collection's filter over whole rows (`candidate_posts_query`), parameters inlined: the COPY peer's SELECT."""
    query = store.candidate_posts_query(settings.min_impressions, settings.engagement_threshold)
    return str(query.compile(store.engine, compile_kwargs={"literal_binds": True}))


class _Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.n += len(b)
        return len(b)


def copy_once(dsn: str, select: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        sink = _Sink()
        conn.cursor().copy_expert(f"COPY ({select}) TO STDOUT", sink)
        return sink.n
    finally:
        conn.close()


def pandas_once(url: str, settings: Settings) -> int:
    import pandas as pd

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            posts = pd.read_sql("SELECT * FROM generated_posts", conn)
            taken = pd.read_sql(
                "SELECT l.post_id FROM ft_example_ledger l JOIN ft_datasets d USING (dataset_id) "
                "WHERE d.status IN ('collected', 'validated', 'trained')",
                conn,
            )
    finally:
        engine.dispose()
    mask = (
        posts["experiment_id"].isna()
        & (posts["impressions"] >= settings.min_impressions)
        & (posts["engagements"] / posts["impressions"] >= settings.engagement_threshold)
        & ~posts["post_id"].isin(taken["post_id"])
    )
    return int(mask.sum())


def peak_rss_mb(url: str, what: str) -> tuple[float, float]:
    """(import-only, after one `what`) peak RSS of a fresh subprocess, in MiB."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", what, "--url", url], check=True, capture_output=True, text=True
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return data["import_mb"], data["peak_mb"]


def vm_hwm_mb() -> float:
    """This process image's peak RSS. Not ru_maxrss: Linux carries the forking parent's peak across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(what: str, url: str) -> None:
    import pandas  # noqa: F401  (both children pay the same imports)

    import_mb = vm_hwm_mb()
    if what == "collect":
        collect_once(PlatformStore(make_engine(url)), settings_for(uncapped=False))
    elif what == "pandas":
        pandas_once(url, settings_for(uncapped=False))
    print(json.dumps({"import_mb": import_mb, "peak_mb": vm_hwm_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,4000000", help="comma-separated post counts (first is timed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pandas-repeats", type=int, default=1)
    parser.add_argument("--pool", type=int, default=3000, help="distinct demo-corpus posts the rows are drawn from")
    parser.add_argument("--child", choices=["collect", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url)
        return
    out = Report()
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    pool = text_pool(args.pool)
    out(f"text pool: {len(pool):,} demo-corpus posts in {time.perf_counter() - started:.1f} s")
    admin = psycopg2.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    admin.autocommit = True
    rss: dict[int, tuple[float, float]] = {}
    try:
        for i, size in enumerate(sizes):
            database = f"finetune_p1_{os.getpid()}_{size}"
            url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"
            dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={database}"
            admin.cursor().execute(f"CREATE DATABASE {database}")
            try:
                seconds = seed(url, size, pool)
                with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
                    db_size = cur.fetchone()[0]  # type: ignore[index]
                out(f"\n[{size:,} posts] seeded with COPY + indexes + history + VACUUM ANALYZE in {seconds:.1f} s "
                     f"({db_size})")  # fmt: skip
                if i == 0:
                    measure(url, dsn, args.repeats, args.pandas_repeats, out)
                rss[size] = peak_rss_mb(url, "collect")
                out(f"  peak RSS of one collection (fresh process): {rss[size][1]:.0f} MiB "
                     f"(imports alone {rss[size][0]:.0f} MiB)")  # fmt: skip
                if i == 0:
                    pandas_rss = peak_rss_mb(url, "pandas")
                    out(f"  peak RSS of the pandas peer (fresh process): {pandas_rss[1]:.0f} MiB")
            finally:
                admin.cursor().execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
                print(f"  dropped database {database}")
    finally:
        admin.close()
    if len(rss) > 1:
        first, last = sizes[0], sizes[-1]
        growth = rss[last][1] / rss[first][1]
        verdict = "OK" if growth <= 1.10 else "MISSED"
        out(f"\npeak RSS {last:,} vs {first:,} posts: {rss[last][1]:.0f} / {rss[first][1]:.0f} MiB = {growth:.2f}x "
             f"(goal: no growth, <= 1.10x allowing for noise): {verdict}")  # fmt: skip
    write_section("p1_collection", out.lines)


def measure(url: str, dsn: str, repeats: int, pandas_repeats: int, out: Report) -> None:
    store = PlatformStore(make_engine(url))
    capped, uncapped = settings_for(uncapped=False), settings_for(uncapped=True)
    select = stream_sql(store, capped)
    n_stream = stream_once(store, capped)
    n_bytes = copy_once(dsn, select)
    train, holdout, rejected = collect_once(store, capped)
    t = time.perf_counter()
    all_train, all_holdout, all_rejected = collect_once(store, uncapped)  # once: it is the slow one
    unc = time.perf_counter() - t
    out(f"  candidates (unused, organic, qualifying): {n_stream:,} rows, COPY text {n_bytes / 1e6:.0f} MB")
    out(f"  shipped config: {train:,} train + {holdout:,} holdout + {rejected:,} rejected "
         f"(max_examples_per_cycle {capped.max_examples_per_cycle:,})")  # fmt: skip
    out(f"  uncapped: {all_train:,} train + {all_holdout:,} holdout + {all_rejected:,} rejected")
    medians = timed(
        {
            "copy": lambda: copy_once(dsn, select),
            "ours": lambda: collect_once(store, capped),
            "stream": lambda: stream_once(store, capped),
        },
        repeats,
    )
    pandas_runs = []
    pandas_once(url, capped)  # warm-up, as the others had
    for _ in range(pandas_repeats):
        t = time.perf_counter()
        n_pandas = pandas_once(url, capped)
        pandas_runs.append(time.perf_counter() - t)
    pandas_s = statistics.median(pandas_runs)
    assert n_pandas == n_stream, (n_pandas, n_stream)
    copy_s, ours, stream = medians["copy"], medians["ours"], medians["stream"]
    out(f"  peer: COPY (same filter) TO STDOUT, all {n_stream:,} candidates: median {copy_s:.3f} s")
    out(f"  peer: pandas.read_sql(table) + filter in pandas ({n_pandas:,} rows): median {pandas_s:.3f} s")
    out(f"  ours: collect_training_data, shipped config:                median {ours:.3f} s")
    out(f"  ours: collect_training_data, uncapped (one run):             {unc:.3f} s")
    out(f"  ours: iter_candidate_posts drained (all candidates, no validation): median {stream:.3f} s")
    out(
        f"  ratio ours / COPY:        {ours / copy_s:.2f}x (goal <= 1.5x): {'OK' if ours / copy_s <= 1.5 else 'MISSED'}"
    )
    out(
        f"  ratio pandas / ours:      {pandas_s / ours:.1f}x (goal >= 5x): {'OK' if pandas_s / ours >= 5 else 'MISSED'}"
    )
    out(f"  ratio uncapped / COPY:    {unc / copy_s:.2f}x;  pandas / uncapped: {pandas_s / unc:.1f}x")
    out(f"  ratio stream / COPY:      {stream / copy_s:.2f}x;  pandas / stream: {pandas_s / stream:.1f}x")
    store.engine.dispose()


if __name__ == "__main__":
    main()
