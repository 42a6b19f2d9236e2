from datetime import timedelta

import numpy as np
import sqlalchemy as sa

from finetune_assets.store.platform import PlatformStore
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


def test_arm_totals_until_a_cutoff_count_only_the_posts_created_before_it(store: PlatformStore) -> None:
    rows = ab_rows(10_000, "exp-1", np.random.default_rng(3))  # one post a minute from NOW
    store.insert_posts(rows)
    cutoff = NOW + timedelta(minutes=150)
    early = store.arm_totals("exp-1", until=cutoff)
    for variant in ("control", "treatment"):
        kept = [r for r in rows if r["variant"] == variant and r["created_at"] < cutoff]
        assert early[variant].users == len({r["user_id"] for r in kept})
        assert early[variant].sum_d == sum(r["impressions"] for r in kept)
        assert early[variant].sum_m == sum(r["engagements"] for r in kept)
    assert store.arm_totals("exp-1", until=NOW) == {}
    assert store.arm_totals("exp-1", until=NOW + timedelta(days=1)) == store.arm_totals("exp-1")


def test_engagement_rate_bins_are_counted_in_sql_over_untaken_organic_posts(store: PlatformStore) -> None:
    seed(store, n_posts=500)
    store.insert_posts(ab_rows(10_000, "exp-1", np.random.default_rng(4)))  # A/B traffic: never in the pool
    bins = store.engagement_rate_bins(min_impressions=100, bins_per_unit=200)
    p = store.posts.c
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(p.engagements, p.impressions).where(
                p.experiment_id.is_(None), p.impressions >= 100, p.engagements >= 0, p.engagements <= p.impressions
            )
        ).all()
    expected: dict[int, int] = {}
    for engagements, impressions in rows:
        index = (engagements * 200) // impressions  # floor(rate / 0.005), exactly, in integers
        expected[index] = expected.get(index, 0) + 1
    assert bins == expected and sum(bins.values()) == len(rows) > 100
    qualifying = sum(n for k, n in bins.items() if k >= 12)  # rate >= 0.06 = 12 bins of 0.005
    assert qualifying == sum(1 for e, i in rows if e >= 0.06 * i) > 0
