"""Deterministic user -> arm assignment (GrowthBook FNV-1a v2 hashing).

Assignment is a pure function of ``(salt, user_id, split, coverage)``: no Python ``hash()`` (salted per
process by ``PYTHONHASHSEED``), no ``random``, no state. Redis or Postgres may cache the result, but the
hash is the source of truth, so any process, replica or later re-analysis gets the same arm.

Encoding choice (SDKs disagree on non-ASCII ids): ids are normalized to ``str(user_id).strip()`` and
FNV-1a XORs one Unicode *code point* at a time, exactly like the GrowthBook Python SDK (``ord(ch)``). For
the ASCII ids we use (decimal user ids, slugs) this also equals the JS SDK; they differ only for astral
characters (emoji), where JS hashes UTF-16 code units.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

Variant = Literal["control", "treatment"]
"""Arm 0 is the production model (control), arm 1 the candidate (treatment)."""

CONTROL_CODE = 0
TREATMENT_CODE = 1
NOT_ENROLLED_CODE = -1

FNV_OFFSET_BASIS = 0x811C9DC5
FNV_PRIME = 0x01000193
_MASK32 = 0xFFFFFFFF
_V2_BUCKETS = 10_000
_V1_BUCKETS = 1_000
_CHUNK = 65_536  # ids hashed per numpy pass in `hash_buckets`; bounds the code-point matrix's memory


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a over the code points of ``text`` (``h ^= ord(ch); h *= prime mod 2**32``)."""
    h = FNV_OFFSET_BASIS
    for ch in text:
        h = ((h ^ ord(ch)) * FNV_PRIME) & _MASK32
    return h


def hash_bucket(seed: str, value: str, version: int = 2) -> float | None:
    """GrowthBook's bucket in [0, 1) for ``value`` under ``seed``; ``None`` for an unknown version.

    v2 re-hashes the decimal string of the first hash, which decorrelates experiments whose seeds
    share a prefix; v1 (``value + seed``, 1,000 buckets) is kept only for the SDK test vectors and as
    the negative control of the tests' cross-experiment independence check — never use it for new experiments.
    """
    if version == 2:
        return _bucket_v2(seed, value)
    if version == 1:
        return fnv1a32(value + seed) % _V1_BUCKETS / _V1_BUCKETS
    return None


def _fnv_from(h: int, text: str) -> int:
    """Continue FNV-1a from state ``h`` over ``text``'s code points (ASCII fast path: bytes are ints).

    The hot loops spell FNV_PRIME and the 32-bit mask as literals: ~10 % faster than global lookups.
    """
    if text.isascii():
        for code in text.encode("ascii"):
            h = ((h ^ code) * 0x01000193) & 0xFFFFFFFF
    else:
        for ch in text:
            h = ((h ^ ord(ch)) * 0x01000193) & 0xFFFFFFFF
    return h


def _bucket_v2(seed: str, value: str) -> float:
    return _bucket_v2_from(_fnv_from(FNV_OFFSET_BASIS, seed), value)


def _bucket_v2_from(seed_state: int, value: str) -> float:
    """v2 bucket with the seed's FNV state precomputed (the seed is the common prefix of every id)."""
    h = _fnv_from(seed_state, value)
    h2 = 0x811C9DC5
    for code in str(h).encode("ascii"):
        h2 = ((h2 ^ code) * 0x01000193) & 0xFFFFFFFF
    return h2 % 10_000 / 10_000


def normalize_user_id(user_id: str | int) -> str:
    """The string that is hashed: ``str(user_id).strip()``, so ``42``, ``"42"`` and ``" 42 "`` agree."""
    if type(user_id) is str:  # the hot path of assign_variant
        text = user_id.strip()
        if text:
            return text
        raise ValueError(f"user_id must not be empty, got {user_id!r}")
    if isinstance(user_id, bool) or not isinstance(user_id, str | int | np.integer):
        raise ValueError(f"user_id must be a str or int, got {type(user_id).__name__} {user_id!r}")
    text = str(user_id).strip()
    if not text:
        raise ValueError(f"user_id must not be empty, got {user_id!r}")
    return text


def _check_args(salt: str, split: float, coverage: float) -> None:
    if not isinstance(salt, str) or not salt:
        raise ValueError(f"salt must be a non-empty string, got {salt!r}")
    _check_split_coverage(split, coverage)


def _check_split_coverage(split: float, coverage: float) -> None:
    # Chained comparisons are False for NaN, so NaN is rejected too.
    if not (isinstance(split, int | float) and 0.0 < split < 1.0):
        raise ValueError(f"split must be in (0, 1) (treatment share of enrolled users), got {split!r}")
    if not (isinstance(coverage, int | float) and 0.0 <= coverage <= 1.0):
        raise ValueError(f"coverage must be in [0, 1], got {coverage!r}")


def bucket_ranges(split: float, coverage: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Half-open bucket ranges ``[cum_w_i, cum_w_i + coverage * w_i)`` for (control, treatment).

    Weights are ``(1 - split, split)``. Each range grows only at its right end as coverage rises, so
    ramping coverage adds users and never moves an enrolled one; changing ``split`` does move
    users, hence a new phase with a new salt.
    """
    _check_split_coverage(split, coverage)
    w_control, w_treatment = 1.0 - split, float(split)
    return (0.0, coverage * w_control), (w_control, w_control + coverage * w_treatment)


def assign_variant(user_id: str | int, salt: str, *, split: float = 0.5, coverage: float = 1.0) -> Variant | None:
    """The arm of ``user_id`` in the experiment phase ``salt`` (``"{experiment_id}:{phase}"``).

    ``split`` is the treatment (candidate) share of enrolled users; ``coverage`` the enrolled share of
    all users. Returns ``None`` when the user is not enrolled (they get production, and are not
    logged as exposed). One hash decides both enrollment and arm, GrowthBook-style; the ranges make
    enrollment monotone in coverage, so no separate enrollment hash is needed for that.
    """
    try:
        seed_state, c_low, c_high, t_low, t_high = _plan(salt, split, coverage)
    except TypeError:  # unhashable arguments: let the validator name the bad one
        _check_args(salt, split, coverage)
        raise
    # _bucket_v2_from(seed_state, normalize_user_id(user_id)), inlined: this is the per-request hot path.
    text = user_id.strip() if type(user_id) is str else normalize_user_id(user_id)
    if not text:
        normalize_user_id(user_id)  # raises the ValueError
    h = seed_state
    if text.isascii():
        for code in text.encode("ascii"):
            h = ((h ^ code) * 0x01000193) & 0xFFFFFFFF
    else:
        for ch in text:
            h = ((h ^ ord(ch)) * 0x01000193) & 0xFFFFFFFF
    h2 = 0x811C9DC5
    for code in str(h).encode("ascii"):
        h2 = ((h2 ^ code) * 0x01000193) & 0xFFFFFFFF
    bucket = h2 % 10_000 / 10_000
    if c_low <= bucket < c_high:
        return "control"
    if t_low <= bucket < t_high:
        return "treatment"
    return None


@lru_cache(maxsize=256)
def _plan(salt: str, split: float, coverage: float) -> tuple[int, float, float, float, float]:
    """Validated arguments → (FNV state after the salt, control range, treatment range); cached per phase."""
    _check_args(salt, split, coverage)
    (c_low, c_high), (t_low, t_high) = bucket_ranges(split, coverage)
    return _fnv_from(FNV_OFFSET_BASIS, salt), c_low, c_high, t_low, t_high


def _fnv_columns(h: npt.NDArray[np.uint64], codes: npt.NDArray[np.uint64], lengths: npt.NDArray[np.intp]) -> None:
    """FNV-1a step over each row's first ``lengths[i]`` code points, in place (rows = ids)."""
    prime = np.uint64(FNV_PRIME)
    mask = np.uint64(_MASK32)
    for j in range(codes.shape[1]):
        live = lengths > j
        if live.all():
            h[:] = ((h ^ codes[:, j]) * prime) & mask
        else:
            h[live] = ((h[live] ^ codes[live, j]) * prime) & mask


def _digit_codes(
    values: npt.NDArray[np.uint64], max_digits: int = 10
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.intp]]:
    """Code points of ``str(v)`` (most significant digit first) and lengths, for ``v`` < 10**max_digits
    (10 digits cover the 32-bit hashes, 20 any uint64 id)."""
    n_digits = np.ones(values.shape, dtype=np.intp)
    for power in range(1, max_digits):
        n_digits += values >= np.uint64(10**power)
    width = int(n_digits.max(initial=1))
    codes = np.zeros((values.size, width), dtype=np.uint64)
    for j in range(width):
        # Digit j (0 = leftmost) of a number with k digits is floor(v / 10**(k-1-j)) % 10, for j < k.
        exponent = np.clip(n_digits - 1 - j, 0, None).astype(np.uint64)
        codes[:, j] = (values // (np.uint64(10) ** exponent)) % np.uint64(10) + np.uint64(ord("0"))
    return codes, n_digits


def _seed_state(seed: str) -> np.uint64:
    return np.uint64(_fnv_from(FNV_OFFSET_BASIS, seed))  # the seed prefix is shared by every id: hash it once


def _second_pass(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """v2's re-hash of the decimal string of the first hash, then the 10,000-bucket fraction."""
    digits, n_digits = _digit_codes(h)
    h2 = np.full(h.size, np.uint64(FNV_OFFSET_BASIS), dtype=np.uint64)
    _fnv_columns(h2, digits, n_digits)
    return (h2 % np.uint64(_V2_BUCKETS)).astype(np.float64) / _V2_BUCKETS


def hash_buckets(seed: str, values: Sequence[str]) -> npt.NDArray[np.float64]:
    """Vectorized v2 :func:`hash_bucket` for already-normalized string ``values`` (bit-identical)."""
    out = np.empty(len(values), dtype=np.float64)
    seed_state = _seed_state(seed)
    for start in range(0, len(values), _CHUNK):
        chunk = list(values[start : start + _CHUNK])
        lengths = np.fromiter(map(len, chunk), dtype=np.intp, count=len(chunk))
        width = max(1, int(lengths.max(initial=0)))
        codes = np.array(chunk, dtype=f"<U{width}").view(np.uint32).reshape(len(chunk), width)
        h = np.full(len(chunk), seed_state, dtype=np.uint64)
        _fnv_columns(h, codes.astype(np.uint64), lengths)
        out[start : start + len(chunk)] = _second_pass(h)
    return out


def _integer_buckets(seed: str, ids: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """v2 buckets of non-negative integer ids hashed as their decimal strings, without building strings."""
    out = np.empty(ids.size, dtype=np.float64)
    seed_state = _seed_state(seed)
    for start in range(0, ids.size, 4 * _CHUNK):
        chunk = ids[start : start + 4 * _CHUNK]
        codes, lengths = _digit_codes(chunk, max_digits=20)
        h = np.full(chunk.size, seed_state, dtype=np.uint64)
        _fnv_columns(h, codes, lengths)
        out[start : start + chunk.size] = _second_pass(h)
    return out


def _as_integer_ids(user_ids: Sequence[str | int] | npt.NDArray[np.integer]) -> npt.NDArray[np.uint64] | None:
    """Non-negative integer ids as uint64 (the fast path of :func:`assign_many`), else None.

    Only exact ints (a list of Python ``int``, a ``range`` or an integer array): a bool, a string or a
    negative id takes the general path, which normalizes (or rejects) each id like the scalar path.
    """
    if isinstance(user_ids, np.ndarray):
        arr = user_ids
    elif isinstance(user_ids, range) or (
        isinstance(user_ids, list | tuple) and user_ids and set(map(type, user_ids)) == {int}
    ):
        try:
            arr = np.asarray(user_ids)
        except OverflowError:
            return None
    else:
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
        return None
    return arr.astype(np.uint64, copy=False)


def assign_many(
    user_ids: Sequence[str | int] | npt.NDArray[np.integer],
    salt: str,
    *,
    split: float = 0.5,
    coverage: float = 1.0,
) -> npt.NDArray[np.int8]:
    """:func:`assign_variant` for many users: 0 = control, 1 = treatment, -1 = not enrolled.

    Same hash and the same float range comparisons as the scalar path, so results are identical
    (asserted in the tests); numpy does the FNV arithmetic column by column over the code points.
    Non-negative integer ids (an int array, a ``range``, a list of ints) skip building strings: their
    decimal digits are computed in numpy (≈ 1M ids in well under a second).
    """
    _check_args(salt, split, coverage)
    integer_ids = _as_integer_ids(user_ids)
    if integer_ids is not None:
        buckets = _integer_buckets(salt, integer_ids)
    else:
        buckets = hash_buckets(salt, [normalize_user_id(u) for u in user_ids])
    (c_low, c_high), (t_low, t_high) = bucket_ranges(split, coverage)
    out = np.full(buckets.shape, NOT_ENROLLED_CODE, dtype=np.int8)
    out[(buckets >= c_low) & (buckets < c_high)] = CONTROL_CODE
    out[(buckets >= t_low) & (buckets < t_high)] = TREATMENT_CODE
    return out


__all__ = [
    "CONTROL_CODE",
    "NOT_ENROLLED_CODE",
    "TREATMENT_CODE",
    "Variant",
    "assign_many",
    "assign_variant",
    "bucket_ranges",
    "fnv1a32",
    "hash_bucket",
    "hash_buckets",
    "normalize_user_id",
]
