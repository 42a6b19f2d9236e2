"""Markdown renderings for materialization metadata: tables people read faster than JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def counts_table(counts: Mapping[str, int], key: str = "reason", value: str = "posts") -> str:
    if not counts:
        return f"_no {value}_"
    ordered: list[tuple[str, int]] = sorted(counts.items(), key=lambda kv: -kv[1])
    return table([key, value], ordered)


def histogram(values: Sequence[float], *, bins: int = 10, marker: float | None = None, fmt: str = "{:.3f}") -> str:
    """A text histogram: one row per bin with a bar, the bin holding `marker` flagged."""
    if not values:
        return "_no values_"
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    peak = max(int(counts.max()), 1)
    rows = []
    for count, low, high in zip(counts, edges[:-1], edges[1:], strict=True):
        flag = " ← threshold" if marker is not None and low <= marker < high else ""
        rows.append((f"{fmt.format(low)} – {fmt.format(high)}", int(count), "█" * round(20 * count / peak) + flag))
    return table(["range", "count", ""], rows)


def curve(points: Sequence[tuple[int, float]], *, max_rows: int = 12, label: str = "loss") -> str:
    if not points:
        return "_no points_"
    step = max(1, len(points) // max_rows)
    picked = list(points[::step])
    if picked[-1] != points[-1]:
        picked.append(points[-1])
    return table(["step", label], [(s, f"{v:.4f}") for s, v in picked])
