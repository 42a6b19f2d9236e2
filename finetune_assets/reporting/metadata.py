"""Renderings for materialization metadata: Markdown tables people read faster than JSON, and plots.

Plots are small PNGs embedded in Markdown as data URIs (`MetadataValue.md`): the Dagster UI shows them in the
asset's metadata ("Show Markdown"), and they travel with the event log, so no file server or artifact store is
needed to see them. matplotlib is imported inside the functions: loading the definitions never pays for it.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from finetune_assets.experiments.runtime.timeline import LiftPoint

PLOT_SIZE = (6.0, 2.8)
"""Inches at PLOT_DPI: 540 x 252 pixels, a few tens of KB at most."""
PLOT_DPI = 90
GOOD, NEUTRAL, BAD, ACCENT = "#2e9d5b", "#9aa4b1", "#c8423b", "#4f43dd"


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


# -- plots -------------------------------------------------------------------------------------------------------


def _figure(ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in threads, always the Agg canvas

    figure = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI, layout="constrained")
    axes = figure.subplots(1, ncols)
    for ax in np.atleast_1d(axes):
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    return figure, axes


def png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", pil_kwargs={"optimize": True})
    return buffer.getvalue()


def image_markdown(png: bytes, alt: str, caption: str = "") -> str:
    """A PNG as Markdown with a data URI: what `MetadataValue.md` needs to show a picture in the UI."""
    data = base64.b64encode(png).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})" + (f"\n\n{caption}" if caption else "")


def engagement_histogram_plot(
    bins: Mapping[int, int], *, bins_per_unit: int, threshold: float, min_impressions: int
) -> bytes:
    """Engagement rates of the posts not yet used (counted in SQL, `PlatformStore.engagement_rate_bins`),
    the qualifying ones in green, the threshold as a line. The x axis stops at 3x the threshold or the 99th
    percentile, whichever is larger; rarer, higher rates are gathered into the last bar."""
    figure, ax = _figure()
    total = sum(bins.values())
    if not total:
        ax.text(0.5, 0.5, "no posts with enough impressions", ha="center", va="center", transform=ax.transAxes)
        return png_bytes(figure)
    width = 1.0 / bins_per_unit
    ordered = sorted(bins.items())
    running, p99 = 0, ordered[-1][0]
    for index, count in ordered:
        running += count
        if running >= 0.99 * total:
            p99 = index
            break
    last = max(p99, math.ceil(3 * threshold * bins_per_unit))
    counts = np.zeros(last + 1)
    for index, count in ordered:
        counts[min(index, last)] += count
    lefts = np.arange(last + 1) * width
    colours = [GOOD if left + 1e-12 >= threshold else NEUTRAL for left in lefts]
    ax.bar(lefts, counts, width=width, align="edge", color=colours, edgecolor="white", linewidth=0.4)
    ax.axvline(threshold, color=BAD, linestyle="--", linewidth=1.2)
    ax.text(threshold, counts.max() * 0.95, f" engagement_threshold {threshold:g}", color=BAD, fontsize=8, va="top")
    qualifying = int(sum(count for index, count in ordered if index / bins_per_unit + 1e-12 >= threshold))
    ax.set_title(
        f"Engagement rate of {total:,} unused posts with ≥ {min_impressions} impressions: {qualifying:,} qualify",
        fontsize=9,
    )
    ax.set_xlabel("engagements / impressions (last bar: this rate or more)", fontsize=8)
    ax.set_ylabel("posts", fontsize=8)
    return png_bytes(figure)


def loss_curves_plot(losses: Sequence[tuple[int, float]], validation_losses: Sequence[tuple[int, float]]) -> bytes:
    """Training loss per step (raw and a moving average) and the validation loss after each epoch."""
    figure, ax = _figure()
    finite = [(s, v) for s, v in losses if math.isfinite(v)]
    if finite:
        steps, values = (np.asarray(x, dtype=float) for x in zip(*finite, strict=True))
        ax.plot(steps, values, color=ACCENT, alpha=0.25, linewidth=0.8, label="training (per step)")
        window = max(1, len(values) // 15)
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, color=ACCENT, linewidth=1.6, label=f"training ({window}-step mean)")
    valid = [(s, v) for s, v in validation_losses if math.isfinite(v)]
    if valid:
        ax.plot(*zip(*valid, strict=True), color=GOOD, marker="o", linewidth=1.4, label="validation (per epoch)")
    if not finite and not valid:
        ax.text(0.5, 0.5, "no finite losses", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, frameon=False)
    ax.set_title("Fine-tune loss", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss (nats/token)", fontsize=8)
    return png_bytes(figure)


def evaluation_plot(scores: Mapping[str, Mapping[str, float]], *, reference_engagement: float | None = None) -> bytes:
    """Candidate vs champion: held-out loss (lower is better) and predicted engagement (higher is better)."""
    figure, (loss_ax, engagement_ax) = _figure(ncols=2)
    names = list(scores)
    colours = [ACCENT if name == "candidate" else NEUTRAL for name in names]
    for ax, key, title, fmt in (
        (loss_ax, "heldout_loss", "held-out loss (lower is better)", "{:.3f}"),
        (engagement_ax, "predicted_engagement", "predicted engagement (higher is better)", "{:.2%}"),
    ):
        # a model behind an API that cannot score text has no held-out loss: an empty bar labelled n/a
        values = [float(scores[name].get(key, float("nan"))) for name in names]
        bars = ax.bar(names, [0.0 if math.isnan(v) else v for v in values], color=colours, width=0.6)
        ax.bar_label(bars, labels=["n/a" if math.isnan(v) else fmt.format(v) for v in values], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.2)
    if reference_engagement is not None:
        engagement_ax.axhline(reference_engagement, color=GOOD, linestyle="--", linewidth=1)
        engagement_ax.text(
            len(names) - 0.5, reference_engagement, "held-out posts", color=GOOD, fontsize=7, ha="right", va="bottom"
        )
    engagement_ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.1%}")
    return png_bytes(figure)


def lift_over_time_plot(points: Sequence[LiftPoint], *, confidence: float, duration_hours: float) -> bytes:
    """Cumulative relative lift of the candidate after each day of the window, with its delta-method interval."""
    figure, ax = _figure()
    if not points:
        ax.text(0.5, 0.5, "not enough users in both arms yet", ha="center", va="center", transform=ax.transAxes)
        return png_bytes(figure)
    hours = np.array([p.hours for p in points])
    lift = np.array([p.lift for p in points])
    low = np.array([p.ci_low for p in points])
    high = np.array([p.ci_high for p in points])
    ax.fill_between(hours, low, high, color=ACCENT, alpha=0.18, linewidth=0, label=f"{confidence:.0%} interval")
    ax.plot(hours, lift, color=ACCENT, marker="o", markersize=3, linewidth=1.5, label="cumulative lift")
    ax.axhline(0.0, color=BAD, linewidth=1, linestyle="--")
    ax.set_xlim(0, max(duration_hours, float(hours.max())))
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:+.0%}")
    ax.set_xlabel("hours since the experiment started", fontsize=8)
    ax.set_title(
        f"Candidate vs production: lift {lift[-1]:+.1%} [{low[-1]:+.1%}, {high[-1]:+.1%}] at the end", fontsize=9
    )
    ax.legend(fontsize=7, frameon=False, loc="best")
    return png_bytes(figure)
