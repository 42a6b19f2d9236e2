"""Small text formats shared by messages, check descriptions and the CLI: one definition each."""

from __future__ import annotations

from datetime import datetime


def signed_pct(x: float, digits: int = 1) -> str:
    """A relative change as a signed percentage with a true minus sign: 0.052 -> "+5.2%", -0.01 -> "−1.0%"."""
    return f"{x * 100:+.{digits}f}%".replace("-", "−")


def utc_minute(iso: str | None) -> str:
    """An ISO timestamp as "YYYY-MM-DD HH:MM UTC" for people, "?" when unknown."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC") if iso else "?"
