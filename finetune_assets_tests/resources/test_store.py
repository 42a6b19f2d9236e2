from datetime import timedelta

import numpy as np
import sqlalchemy as sa

from finetune_assets.resources.store import PlatformStore
from finetune_assets_tests.conftest import NOW, seed


def ab_rows(first_id: int, experiment_id: str, rng: np.random.Generator, n: int = 400) -> list[dict]:
    rows = []
    for i in range(n):
        impressions = int(rng.integers(1, 900))
        rows.append(
            {
                "post_id": first_id + i,
                "created_at": NOW + timedelta(minutes=i),
                "user_id": f"u{int(rng.integers(0, 60))}",
                "model_id": "m",
                "experiment_id": experiment_id,
                "variant": "control" if rng.random() < 0.5 else "treatment",
                "prompt_messages": "[]",
                "completion": "x",
                "impressions": impressions,
                "engagements": int(rng.binomial(impressions, 0.06)),
                "updated_at": NOW,
            }
        )
    return rows


def test_arm_totals_are_per_user_sums_computed_in_sql(store: PlatformStore) -> None:
    rng = np.random.default_rng(1)
    rows = ab_rows(10_000, "exp-1", rng)
    rows.append({**rows[0], "post_id": 20_000, "impressions": 5, "engagements": 9})  # invalid: excluded
    store.insert_posts(rows)
    totals = store.arm_totals("exp-1")
    for variant in ("control", "treatment"):
        per_user: dict[str, list[int]] = {}
        for r in rows[:-1]:
            if r["variant"] == variant:
                m, d = per_user.setdefault(r["user_id"], [0, 0])
                per_user[r["user_id"]] = [m + r["engagements"], d + r["impressions"]]
        m = np.array([v[0] for v in per_user.values()], dtype=float)
        d = np.array([v[1] for v in per_user.values()], dtype=float)
        arm = totals[variant]
        assert arm.users == len(per_user)
        assert (arm.sum_m, arm.sum_d) == (m.sum(), d.sum())
        assert np.isclose(arm.sum_m2, (m * m).sum()) and np.isclose(arm.sum_md, (m * d).sum())
        assert np.isclose(arm.sum_d2, (d * d).sum())


def test_ab_traffic_never_counts_as_training_candidates(store: PlatformStore) -> None:
    seed(store, n_posts=300)
    before = store.count_qualifying(100, 0.06)
    store.insert_posts(ab_rows(10_000, "exp-1", np.random.default_rng(2)))
    assert store.count_qualifying(100, 0.06) == before
    pool = store.pool_counts(100, 0.06)
    assert pool.qualifying == before[0]
    assert pool.unused_posts == 300
    assert pool.qualifying + pool.below_min_impressions + pool.below_engagement_threshold <= pool.unused_posts


def test_platform_tables_are_created_idempotently(store: PlatformStore) -> None:
    again = PlatformStore(store.engine)
    tables = set(sa.inspect(again.engine).get_table_names())
    assert {"ft_datasets", "ft_example_ledger", "ft_models", "ft_experiments", "ft_promotions"} <= tables
