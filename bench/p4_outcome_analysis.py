"""P4: the A/B outcome analysis over N post rows in Postgres ≤ 1.5× the bare GROUP BY that sums them.

Measured in the same run, on the same table, warm, alternating, median of `--repeats`:

* peer — the bare aggregate any analysis must at least pay:
  `SELECT variant, count(*), sum(impressions), sum(engagements) ... WHERE experiment_id = ? GROUP BY variant`;
* ours — the whole outcome analysis: `PlatformStore.arm_totals` (per-user sums, then per-arm sums of
  them, in SQL) + `final_decision` (delta-method lift, χ² SRM, guardrails) + one `monitor` look.

A throw-away database (`finetune_p4_<pid>`) on 127.0.0.1:5432 (user postgres, trust auth) is created,
seeded with binary COPY (numpy builds the tuples) and dropped at the end, also on failure. Rows: posts of
`--users` users (default 40,000), hashed 50/50 into arms with `assign_many`, all in one experiment.

Two peers are printed: the bare per-arm GROUP BY (the goal's peer) and the exact per-user SQL that
`arm_totals` sends, run bare through psycopg2 (so the engine's own overhead is visible apart from the
cost of grouping per user, which the delta method needs: its variance is a function of per-user sums, see
Deng et al. 2018, https://arxiv.org/abs/1803.06336). Writes its lines into docs/performance.md (section
`p4_outcome_analysis`).
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg2
import sqlalchemy as sa
from timing import Report, timed, write_section  # bench/timing.py

from finetune_assets.experiments.policy.decision import FinalDecision, final_decision
from finetune_assets.experiments.policy.guardrails import default_guardrails
from finetune_assets.experiments.policy.monitor import monitor
from finetune_assets.experiments.runtime.assignment import assign_many
from finetune_assets.experiments.stats.statistics import ArmSums
from finetune_assets.store.engine import make_engine
from finetune_assets.store.platform import PlatformStore
from finetune_assets.store.schema import INDEX_ORDER_PLAN_OFF

EXPERIMENT = "exp-p4-bench"
SALT = "exp-p4-bench:1"
MODELS = {"control": "prod-model-v1", "treatment": "cand-model-v2"}  # equal lengths: fixed-width tuples
COLUMNS = "post_id, created_at, user_id, model_id, experiment_id, variant, impressions, engagements, updated_at"
PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in Unix microseconds (binary timestamptz)
START_US = 1_767_571_200 * 1_000_000 - PG_EPOCH_US  # 2026-01-05 00:00 UTC


def _tuple_dtype(variant: str) -> np.dtype[Any]:
    """One binary-COPY tuple of fixed width: int16 field count, then (int32 length, big-endian value)."""
    fields: list[tuple[str, str]] = [("nfields", ">i2")]
    widths = {
        "post_id": ">i8",
        "created_at": ">i8",
        "user_id": "S10",
        "model_id": f"S{len(MODELS[variant])}",
        "experiment_id": f"S{len(EXPERIMENT)}",
        "variant": f"S{len(variant)}",
        "impressions": ">i8",
        "engagements": ">i8",
        "updated_at": ">i8",
    }
    for name, kind in widths.items():
        fields += [(f"{name}_len", ">i4"), (name, kind)]
    return np.dtype(fields)


def _tuples(variant: str, post_id: npt.NDArray[np.int64], user: npt.NDArray[np.int64], imps: npt.NDArray[np.int64],
            engs: npt.NDArray[np.int64], created: npt.NDArray[np.int64]) -> bytes:  # fmt: skip
    dtype = _tuple_dtype(variant)
    rows = np.zeros(post_id.size, dtype=dtype)
    rows["nfields"] = 9
    for name in ("post_id", "created_at", "impressions", "engagements", "updated_at"):
        rows[f"{name}_len"] = 8
    rows["user_id_len"] = 10
    rows["model_id_len"] = len(MODELS[variant])
    rows["experiment_id_len"] = len(EXPERIMENT)
    rows["variant_len"] = len(variant)
    rows["post_id"] = post_id
    rows["created_at"] = created
    rows["updated_at"] = created
    rows["user_id"] = np.char.add(b"u", np.char.zfill(user.astype("S9"), 9))
    rows["model_id"] = MODELS[variant].encode()
    rows["experiment_id"] = EXPERIMENT.encode()
    rows["variant"] = variant.encode()
    rows["impressions"] = imps
    rows["engagements"] = engs
    return rows.tobytes()


def copy_stream(rows: int, users: int, seed: int, chunk: int = 500_000) -> Iterator[bytes]:
    """Binary COPY payload: header, tuples in chunks (control and treatment batches), trailer."""
    rng = np.random.default_rng(seed)
    propensity = rng.beta(1.14, 17.86, size=users)
    arm = assign_many(np.arange(users), SALT)  # 0 control, 1 treatment
    yield b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    for start in range(0, rows, chunk):
        k = min(chunk, rows - start)
        post_id = np.arange(start + 1, start + k + 1, dtype=np.int64)
        user = rng.integers(0, users, size=k)
        imps = 1 + rng.negative_binomial(2, 2 / 11, size=k)
        engs = rng.binomial(imps, propensity[user])
        created = START_US + rng.integers(0, 168 * 3600 * 1_000_000, size=k)
        for code, variant in ((0, "control"), (1, "treatment")):
            mask = arm[user] == code
            yield _tuples(variant, post_id[mask], user[mask], imps[mask], engs[mask], created[mask])
    yield struct.pack(">h", -1)


class _Reader(io.RawIOBase):
    """File-like view of a bytes iterator for psycopg2's copy_expert; short reads, no re-copying."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._current:
            try:
                self._current = memoryview(next(self._parts))
            except StopIteration:
                return b""  # EOF
        n = len(self._current) if size < 0 else min(size, len(self._current))
        out, self._current = self._current[:n].tobytes(), self._current[n:]
        return out


def seed(store: PlatformStore, rows: int, users: int) -> float:
    started = time.perf_counter()
    store.create_posts_table()
    for index in store.posts.indexes:  # load first, index after: much faster
        index.drop(store.engine)
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        reader = _Reader(copy_stream(rows, users, seed=4))
        cursor.copy_expert(f"COPY generated_posts ({COLUMNS}) FROM STDIN WITH (FORMAT binary)", reader, size=1 << 20)
        raw.commit()
    finally:
        raw.close()
    for index in store.posts.indexes:
        index.create(store.engine)
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE generated_posts"))
    return time.perf_counter() - started


BARE_ARM_SQL = (
    "SELECT variant, count(*), sum(impressions), sum(engagements) FROM generated_posts "
    "WHERE experiment_id = %(e)s GROUP BY variant"
)


def _raw_query(engine: sa.Engine, sql: str, parameters: Any, plan_off: tuple[str, ...] = ()) -> Callable[[], object]:
    def run() -> object:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            for setting in plan_off:  # the same transaction-local planner settings the store uses
                cursor.execute(f"SET LOCAL {setting} = off")
            cursor.execute(sql, parameters)
            return cursor.fetchall()
        finally:
            raw.rollback()
            raw.close()

    return run


def measure(engine: sa.Engine, users: int, repeats: int, label: str, out: Report) -> None:
    store = PlatformStore(engine)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "GROUP BY" in statement and "user_id" in statement:
            captured.append((statement, parameters))

    def analysis() -> FinalDecision:
        totals = store.arm_totals(EXPERIMENT)
        arms = {v: ArmSums(t.users, t.sum_m, t.sum_d, t.sum_m2, t.sum_d2, t.sum_md) for v, t in totals.items()}
        control, treatment = arms["control"], arms["treatment"]
        look = monitor(control, treatment, hours_elapsed=168, n_star=users)
        return final_decision(control, treatment, guardrails=default_guardrails(control, treatment), harm_alarm=look)

    sa.event.listen(engine, "before_cursor_execute", capture)
    decision = analysis()
    sa.event.remove(engine, "before_cursor_execute", capture)
    per_user_sql, per_user_parameters = captured[-1]  # the exact statement arm_totals sends
    medians = timed(
        {
            "bare per-arm": _raw_query(engine, BARE_ARM_SQL, {"e": EXPERIMENT}),
            "bare per-user": _raw_query(engine, per_user_sql, per_user_parameters, INDEX_ORDER_PLAN_OFF),
            "analysis": analysis,
        },
        repeats,
    )
    arm, user, ours = medians["bare per-arm"], medians["bare per-user"], medians["analysis"]
    out(f"[{label}]")
    out(f"  peer: bare GROUP BY variant (sums per arm), psycopg2:       median {arm:.3f} s")
    out(f"  peer: arm_totals' own SQL (per-user, then per-arm), psycopg2: median {user:.3f} s")
    out(f"  ours: store.arm_totals + monitor + final_decision:          median {ours:.3f} s")
    verdict = "OK" if ours / arm <= 1.5 else "MISSED"
    out(f"  ratio ours / bare per-arm GROUP BY: {ours / arm:.2f}x (goal <= 1.5x): {verdict}")
    out(f"  ratio ours / its own SQL run bare:  {ours / user:.2f}x (engine + ORM overhead)")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for setting in INDEX_ORDER_PLAN_OFF:
            cursor.execute(f"SET LOCAL {setting} = off")
        cursor.execute("EXPLAIN " + per_user_sql, per_user_parameters)
        plan = [row[0].strip() for row in cursor.fetchall()]
    finally:
        raw.rollback()
        raw.close()
    out("  plan of arm_totals: " + " / ".join(line for line in plan if "Aggregate" in line or "Scan" in line))
    out(f"  decision on the synthetic A/A data: {decision.action}: {decision.reason[:140]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=40_000, help="distinct users (default 40,000: 20,000 per arm)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    args = parser.parse_args()
    out = Report()
    database = f"finetune_p4_{os.getpid()}"
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"

    admin = psycopg2.connect(args.dsn)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {database}")
    engines: list[sa.Engine] = []
    try:
        engine = make_engine(url)
        engines.append(engine)
        seconds = seed(PlatformStore(engine), args.rows, args.users)
        out(f"seeded {args.rows:,} rows, {args.users:,} users (COPY, indexes, VACUUM ANALYZE): {seconds:.1f} s")
        measure(engine, args.users, args.repeats, "store schema and server defaults as shipped", out)
        write_section("p4_outcome_analysis", out.lines)
    finally:
        for engine in engines:
            engine.dispose()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()
        print(f"dropped database {database}")


if __name__ == "__main__":
    main()
