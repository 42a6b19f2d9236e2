"""Assignment: hash vectors, uniformity, independence, determinism and ramping."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from finetune_assets.experiments.runtime.assignment import (
    assign_many,
    assign_variant,
    bucket_ranges,
    fnv1a32,
    hash_bucket,
    hash_buckets,
    normalize_user_id,
)

# GrowthBook SDK test vectors: growthbook-python tests/cases.json (specVersion 0.7.1), (seed, value, version) -> bucket.
HASH_VECTORS = [
    ("seed", "a", 2, 0.0505),
    ("seed", "b", 2, 0.2696),
    ("foo", "ab", 2, 0.2575),
    ("foo", "def", 2, 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 2, 0.124),
    ("90850943850283058242805", "123", 2, 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 2, 0.0128),
    ("", "a", 1, 0.22),
    ("", "b", 1, 0.077),
    ("b", "a", 1, 0.946),
]

SALT = "ab-test-42:1"


@pytest.mark.parametrize(("seed", "value", "version", "expected"), HASH_VECTORS)
def test_hash_vectors(seed: str, value: str, version: int, expected: float) -> None:
    bucket = hash_bucket(seed, value, version)
    assert bucket is not None
    assert round(bucket, 4) == expected


def test_unknown_hash_version_is_none() -> None:
    assert hash_bucket("seed", "a", 99) is None
    assert hash_bucket("seed", "a", 0) is None


def test_fnv1a32_known_values() -> None:
    # Published FNV-1a 32-bit test values (empty string = offset basis).
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def _independent_v2_bucket(seed: str, value: str) -> float:
    """Second implementation over UTF-32 code units, written differently from the module's."""

    def fnv(data: str) -> int:
        h = 2166136261
        for (code,) in np.frombuffer(data.encode("utf-32-le"), dtype="<u4").reshape(-1, 1).tolist():
            h = ((h ^ code) * 16777619) % 2**32
        return h

    return fnv(str(fnv(seed + value))) % 10000 / 10000


def test_vectorized_and_scalar_paths_agree_including_unicode() -> None:
    rng = np.random.default_rng(7)
    alphabet = [*"abcXYZ019-_:@ é€中", "😀", "𝔘"]  # astral chars: code points, not UTF-16 units
    ids: list[str | int] = [int(i) for i in rng.integers(0, 10**12, size=300)]
    ids += ["u" + "".join(rng.choice(alphabet, size=int(k))) for k in rng.integers(1, 30, size=300)]
    ids += [" 42 ", "42", 42, "x" * 200]
    for split, coverage in [(0.5, 1.0), (0.3, 0.1), (0.1, 0.77), (0.5, 0.0)]:
        vec = assign_many(ids, SALT, split=split, coverage=coverage)
        scalar = [assign_variant(u, SALT, split=split, coverage=coverage) for u in ids]
        codes = [{"control": 0, "treatment": 1, None: -1}[v] for v in scalar]
        assert vec.tolist() == codes
    assert assign_many([], SALT).shape == (0,)
    normalized = [normalize_user_id(u) for u in ids]
    buckets = hash_buckets(SALT, normalized)
    assert buckets.tolist() == [hash_bucket(SALT, v) for v in normalized]
    assert buckets.tolist() == [_independent_v2_bucket(SALT, v) for v in normalized]


def test_ids_are_normalized_to_stripped_strings() -> None:
    assert normalize_user_id(42) == normalize_user_id(" 42\n") == "42"
    assert assign_variant(42, SALT) == assign_variant("42", SALT) == assign_variant(" 42 ", SALT)


def test_uniformity_100k_ids() -> None:
    ids = list(range(1, 100_001))
    buckets = hash_buckets(SALT, [str(i) for i in ids])
    assert buckets.min() >= 0.0
    assert buckets.max() < 1.0
    observed = np.bincount((buckets * 100).astype(int), minlength=100)
    assert stats.chisquare(observed).pvalue > 0.001
    # 50/50 share: SE = sqrt(0.25/1e5) = 0.0016, so ±0.005 is ≈ 3 SE.
    arms = assign_many(ids, SALT, split=0.5)
    assert abs(float(np.mean(arms == 1)) - 0.5) < 0.005
    assert not (arms == -1).any()


def test_split_share_follows_weights() -> None:
    arms = assign_many(range(1, 100_001), SALT, split=0.2, coverage=0.5)
    assert abs(float(np.mean(arms != -1)) - 0.5) < 0.005
    enrolled = arms[arms != -1]
    assert abs(float(np.mean(enrolled == 1)) - 0.2) < 0.006  # SE 0.0018 at 50k enrolled


def test_cross_experiment_independence() -> None:
    ids = [str(i) for i in range(100_000)]
    # |corr| < 0.01 is ≈ 3 SE at 100k ids (SE = 1/sqrt(1e5) = 0.0032).
    v2 = np.corrcoef(hash_buckets("exp-1", ids), hash_buckets("exp-2", ids))[0, 1]
    assert abs(v2) < 0.01
    # Negative control: legacy v1 (value + seed) correlates experiments whose seeds share a prefix.
    v1_a = np.array([hash_bucket("exp-1", i, 1) for i in ids])
    v1_b = np.array([hash_bucket("exp-2", i, 1) for i in ids])
    assert abs(np.corrcoef(v1_a, v1_b)[0, 1]) > 0.03


def test_same_arm_in_processes_with_different_hash_seeds() -> None:
    ids = list(range(500)) + [f"user-{i}" for i in range(500)]
    expected = assign_many(ids, SALT, split=0.5, coverage=0.8).tolist()
    script = (
        "import json, sys\n"
        "from finetune_assets.experiments.runtime.assignment import assign_variant\n"
        "ids = json.loads(sys.stdin.read())\n"
        "codes = {'control': 0, 'treatment': 1, None: -1}\n"
        f"print(json.dumps([codes[assign_variant(u, {SALT!r}, coverage=0.8)] for u in ids]))\n"
    )
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(ids),
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        assert json.loads(result.stdout) == expected


def test_assignments_are_pinned() -> None:
    """Regression pin: a change here silently reshuffles every running experiment."""
    arms = assign_many(range(1, 33), "ab-test-42:1").tolist()
    assert "".join(str(a) for a in arms) == PINNED_ARMS


PINNED_ARMS = "00011101010010001110110001000111"


def test_ramp_never_moves_enrolled_users() -> None:
    ids = list(range(100_000))
    previous = None
    for coverage in (0.0, 0.05, 0.2, 0.5, 1.0):
        arms = assign_many(ids, SALT, split=0.5, coverage=coverage)
        assert abs(float(np.mean(arms != -1)) - coverage) < 0.005
        if previous is not None:
            was_enrolled = previous != -1
            assert (arms[was_enrolled] == previous[was_enrolled]).all()
        previous = arms


def test_bucket_ranges_are_half_open_and_grow_to_the_right() -> None:
    assert bucket_ranges(0.5, 1.0) == ((0.0, 0.5), (0.5, 1.0))
    assert bucket_ranges(0.5, 0.1) == ((0.0, 0.05), (0.5, 0.55))
    assert bucket_ranges(0.2, 1.0) == ((0.0, 0.8), (0.8, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"split": 0.0}, "split"),
        ({"split": 1.0}, "split"),
        ({"split": -0.2}, "split"),
        ({"split": float("nan")}, "split"),
        ({"coverage": 1.01}, "coverage"),
        ({"coverage": -0.1}, "coverage"),
        ({"coverage": float("nan")}, "coverage"),
    ],
)
def test_bad_split_or_coverage_raise_value_error_naming_it(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        assign_variant("1", SALT, **kwargs)
    with pytest.raises(ValueError, match=name):
        assign_many(["1"], SALT, **kwargs)


def test_bad_ids_and_salt_raise_value_error() -> None:
    with pytest.raises(ValueError, match="salt"):
        assign_variant("1", "")
    for bad in ("", "   ", None, True, 1.5):
        with pytest.raises(ValueError, match="user_id"):
            assign_variant(bad, SALT)  # type: ignore[arg-type]


def test_integer_fast_path_matches_the_scalar_path() -> None:
    codes = {"control": 0, "treatment": 1, None: -1}
    rng = np.random.default_rng(77)
    big = np.concatenate(
        [
            np.array([0, 9, 10, 99, 100, 2**32 - 1, 2**32, 2**63 - 1], dtype=np.uint64),
            rng.integers(0, 2**63, size=500, dtype=np.int64).astype(np.uint64),
            np.array([2**64 - 1], dtype=np.uint64),
        ]
    )
    for split, coverage in [(0.5, 1.0), (0.3, 0.4)]:
        expected = [codes[assign_variant(str(int(v)), SALT, split=split, coverage=coverage)] for v in big]
        assert assign_many(big, SALT, split=split, coverage=coverage).tolist() == expected
        small = list(range(0, 3000, 7))
        expected = [codes[assign_variant(v, SALT, split=split, coverage=coverage)] for v in small]
        assert assign_many(small, SALT, split=split, coverage=coverage).tolist() == expected
        assert assign_many(range(0, 3000, 7), SALT, split=split, coverage=coverage).tolist() == expected
        assert assign_many(np.array(small, dtype=np.int32), SALT, split=split, coverage=coverage).tolist() == expected
    # Ids the fast path does not take still agree with the scalar path (negative, mixed) or are rejected.
    mixed: list[str | int] = [-5, 3, "7", " 8 ", 2**70]
    assert assign_many(mixed, SALT).tolist() == [codes[assign_variant(u, SALT)] for u in mixed]
    with pytest.raises(ValueError, match="user_id"):
        assign_many([1, True], SALT)
