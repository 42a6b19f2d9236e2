"""Creates that happen once: job creation and uploads retried by us, never blindly by the SDK.

The SDK retries a POST whose answer was lost (a 500 or a dropped connection after the server acted) by sending
it again, so one call could start two jobs or upload a file twice. Creates therefore go out with the SDK's
per-request `with_options(max_retries=0)` and `create_once` retries them: after every transient failure it
waits, looks for the object the failed attempt may have created and uses it if it is there; only then does it
send the create again. It classifies errors as the breaker does (`is_transient`), honours the server's
`x-should-retry: false` and `retry-after-ms` / `retry-after`, and otherwise backs off as the SDK does
(0.5 s doubling to 8 s, minus up to 25 % jitter).

A duplicate can still slip through (a listing that lags behind a create, two processes at once), so
`keeper_of` picks the one object to keep: the job furthest along, then the oldest; the oldest file.
`settle_jobs` cancels the other live jobs and `settle_files` deletes the other uploads, each saying so.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from finetune_assets.finetuning.openai_client import is_transient

if TYPE_CHECKING:
    from finetune_assets.finetuning.openai_client import OpenAIClient

T = TypeVar("T")

INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 120.0
"""The SDK's own constants: a server asking for a longer wait than this is not retried."""
JOB_STATUS_RANK = {"validating_files": 0, "queued": 1, "running": 2, "succeeded": 3}
"""How far along a job is; an unknown live status (e.g. `paused`) ranks with `running`."""


@dataclass(frozen=True)
class Created(Generic[T]):
    """What `create_once` got: the object, the create attempts sent, and whether a lookup found it."""

    obj: T
    attempts: int
    found: bool


def _header(exc: BaseException, name: str) -> str | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get(name) if headers is not None else None
    return value if isinstance(value, str) else None


def _retry_after_s(exc: BaseException) -> float | None:
    """The server's requested wait (`retry-after-ms`, else `retry-after` in seconds or as an HTTP date)."""
    if (ms := _header(exc, "retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    raw = _header(exc, "retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        return None if parsed is None else float(email.utils.mktime_tz(parsed) - time.time())


def retry_delay(exc: BaseException, retry: int, jitter: Callable[[], float] = random.random) -> float | None:
    """Seconds to wait before retry number `retry` (0 for the first), or None when it must not be retried:
    not transient, `x-should-retry: false`, or a `retry-after` longer than the SDK would wait."""
    if not is_transient(exc) or _header(exc, "x-should-retry") == "false":
        return None
    asked = _retry_after_s(exc)
    if asked is not None and math.isfinite(asked):
        if asked > MAX_RETRY_AFTER_S:
            return None
        if asked > 0:
            return asked
    return min(INITIAL_RETRY_DELAY_S * 2.0 ** min(retry, 60), MAX_RETRY_DELAY_S) * (1 - 0.25 * jitter())


def create_once(
    *,
    what: str,
    create: Callable[[], T],
    find: Callable[[], T | None],
    attempts: int,
    sleep: Callable[[float], None],
    say: Callable[[str], None],
    describe: Callable[[BaseException], str] = str,
) -> Created[T]:
    """`create()` at most `attempts` times; after each transient failure, `find()` what it may have made.

    The caller has looked before the first attempt. A failure that is not transient is raised at once (the
    server refused, nothing was made); after the last attempt, one more lookup runs before the error is raised,
    since a lost answer to the last attempt leaves its object behind too.
    """
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return Created(create(), attempt, found=False)
        except Exception as exc:
            delay = retry_delay(exc, attempt - 1)
            if delay is None and not is_transient(exc):
                raise
            last = attempt >= attempts or delay is None
            say(
                f"{what}: attempt {attempt} of {attempts} failed ({describe(exc)}); the server may have acted, "
                f"so looking for its result {'before giving up' if last else f'in {delay:.1f} s'}"
            )
            if delay is not None:
                sleep(delay)
            existing = find()
            if existing is not None:
                say(f"{what}: found {getattr(existing, 'id', existing)}, made by the attempt whose answer was lost")
                return Created(existing, attempt, found=True)
            if last:
                raise
    raise AssertionError("unreachable: the loop returns or raises")


def keeper_of(jobs: Iterable[Any]) -> Any:
    """The job to keep among duplicates: the one furthest along (succeeded, running, queued, validating), then
    the oldest; ties by id, so every process picks the same one."""
    return min(jobs, key=lambda job: (-JOB_STATUS_RANK.get(job.status, 2), job.created_at, job.id))


def with_object(listed: list[Any], obj: Any) -> list[Any]:
    """`listed` plus `obj` unless it is there already (by id): a listing may lag behind a create."""
    return listed if any(item.id == obj.id for item in listed) else [*listed, obj]


def oldest_file(files: Iterable[Any]) -> Any:
    """The file to keep among uploads of the same content: the oldest, ties by id."""
    return min(files, key=lambda item: (item.created_at, item.id))


def create_through_breaker(
    api: OpenAIClient,
    what: str,
    create: Callable[[], T],
    find: Callable[[], T | None],
    attempts: int,
    *,
    sleep: Callable[[float], None],
    say: Callable[[str], None],
) -> T:
    """`create_once` behind the circuit breaker: the whole retry loop counts as one call, as the SDK's did."""
    created = api.call(
        lambda: create_once(
            what=what, create=create, find=find, attempts=attempts, sleep=sleep, say=say, describe=api.describe
        )
    )
    return created.obj


def settle_jobs(
    api: OpenAIClient, alive: list[Any], *, say: Callable[[str], None], keep: str | None = None
) -> tuple[Any, list[str]]:
    """Keep one of the live jobs for one key (`keep`, else `keeper_of`) and cancel the others, since two jobs
    bill twice: (the job kept, the ids cancelled). One that already succeeded is reported and left."""
    import openai

    chosen = next((job for job in alive if job.id == keep), None) or keeper_of(alive)
    cancelled: list[str] = []
    for job in alive:
        if job.id == chosen.id:
            continue
        if job.status in ("succeeded", "failed", "cancelled"):
            say(f"duplicate job {job.id} for this key already {job.status}; left as it is, keeping {chosen.id}")
            continue
        with contextlib.suppress(openai.BadRequestError, openai.ConflictError, openai.NotFoundError):
            api.call(api.sdk.fine_tuning.jobs.cancel, job.id)
            cancelled.append(job.id)
            say(f"duplicate job {job.id} ({job.status}) for this key: cancelled it, keeping {chosen.id}")
    return chosen, cancelled


def settle_files(api: OpenAIClient, what: str, *, say: Callable[[str], None], named: list[Any]) -> str:
    """Keep the oldest upload of one content (`oldest_file`) and delete the others: the id kept."""
    import openai

    keep = oldest_file(named)
    extra = [item.id for item in named if item.id != keep.id]
    for file_id in extra:
        with contextlib.suppress(openai.NotFoundError):
            api.call(api.sdk.files.delete, file_id)
    if extra:
        say(f"{what}: {len(extra)} duplicate upload(s) of the same content {extra}: deleted, keeping {keep.id}")
    return str(keep.id)
