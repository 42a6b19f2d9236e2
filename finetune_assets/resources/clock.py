"""An injectable clock: real time in production, simulated time in the demo and in tests.

The A/B window is 168 hours of wall time; the demo compresses it by pinning "now" to the window's end
instead of sleeping, and tests pin it to any instant.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg


def parse_instant(value: str) -> datetime:
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"clock.fixed_now = {value!r}: expected an ISO-8601 timestamp") from None
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)


class ClockResource(dg.ConfigurableResource):
    """`fixed_now` (ISO-8601) pins the clock; unset, the clock is the system's UTC time."""

    fixed_now: str | None = None

    def now(self) -> datetime:
        return parse_instant(self.fixed_now) if self.fixed_now else datetime.now(UTC)
