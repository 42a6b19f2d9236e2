"""Small text formats shared by messages, check descriptions and the CLI: one definition each."""

from __future__ import annotations

from datetime import datetime


def signed_pct(x: float, digits: int = 1) -> str:
    """A relative change as a signed percentage with a true minus sign: 0.052 -> "+5.2%", -0.01 -> "−1.0%"."""
    return f"{x * 100:+.{digits}f}%".replace("-", "−")


def utc_minute(iso: str | None) -> str:
    """An ISO timestamp as "YYYY-MM-DD HH:MM UTC" for people, "?" when unknown."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC") if iso else "?"


def zoned_minute(iso: str | None) -> str:
    """An ISO timestamp as "YYYY-MM-DD HH:MM <zone>" in its own time zone (none shown if naive), "?" when
    unknown: a schedule's next tick reads in the schedule's time zone."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M %Z").strip() if iso else "?"


def iso_seconds(moment: datetime | None) -> str | None:
    """A moment as ISO 8601 to the second, for JSON output; None stays None."""
    return moment.isoformat(timespec="seconds") if moment is not None else None
