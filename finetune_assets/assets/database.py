"""A lost database connection inside a step: one clear failure that says the next tick finishes the work."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import sqlalchemy as sa

from finetune_assets.store.engine import driver_reason


@contextmanager
def lost_connection_is_retried(what: str) -> Iterator[None]:
    """Turn a dropped connection (a terminated backend, a failover, a proxy cut) into one `dg.Failure`.

    Only for steps whose every write is idempotent and whose retry is scheduled (the decision and the
    promotion: `ab_test_sensor` launches a new attempt); any other database error keeps its traceback.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        cause = driver_reason(exc)
        raise dg.Failure(
            description=(
                f"{what}: the database connection was lost ({cause}); what was committed stays, the rest was "
                "rolled back, and ab_test_sensor retries this step on its next tick"
            )
        ) from None
