"""Plots in materialization metadata: small PNGs as Markdown data URIs, present after a demo cycle."""

import base64
import io
import re
import subprocess
import sys

import dagster as dg
import pytest
from PIL import Image

from finetune_assets.experiments.runtime.timeline import LiftPoint
from finetune_assets.reporting import metadata as reporting

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = {
    "training_data": "engagement_rate_plot",
    "fine_tuned_model": "loss_plot",
    "evaluation_scores": "evaluation_plot",
    "ab_test_outcome": "lift_plot",
}


def decode_markdown_image(markdown: str) -> bytes:
    found = re.search(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert found, markdown[:200]
    return base64.b64decode(found.group(1))


def assert_small_png(png: bytes) -> None:
    assert png.startswith(PNG_SIGNATURE)
    assert 2_000 < len(png) < 80_000, len(png)
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (540, 252)


def test_each_plot_is_a_small_png() -> None:
    bins = {k: 100 - 6 * abs(k - 8) for k in range(0, 30)}
    assert_small_png(reporting.engagement_histogram_plot(bins, bins_per_unit=200, threshold=0.06, min_impressions=100))
    losses = [(s, 3.0 / (1 + s / 20)) for s in range(1, 60)]
    assert_small_png(reporting.loss_curves_plot(losses, [(20, 2.1), (40, 1.8), (59, 1.7)]))
    scores = {
        "candidate": {"heldout_loss": 1.4, "predicted_engagement": 0.05},
        "champion": {"heldout_loss": 1.8, "predicted_engagement": 0.03},
    }
    assert_small_png(reporting.evaluation_plot(scores, reference_engagement=0.07))
    points = [
        LiftPoint(h, 0.4 - h / 1000, 0.1, 0.7 - h / 500, 100 + h, 100 + h) for h in (24, 48, 72, 96, 120, 144, 168)
    ]
    assert_small_png(reporting.lift_over_time_plot(points, confidence=0.95, duration_hours=168))


def test_plots_of_nothing_say_so_instead_of_failing() -> None:
    assert_small_png(reporting.engagement_histogram_plot({}, bins_per_unit=200, threshold=0.06, min_impressions=100))
    assert_small_png(reporting.loss_curves_plot([(1, float("nan"))], []))
    assert_small_png(reporting.lift_over_time_plot([], confidence=0.95, duration_hours=168))


def test_image_markdown_round_trips() -> None:
    png = reporting.loss_curves_plot([(1, 2.0), (2, 1.5)], [])
    markdown = reporting.image_markdown(png, "loss curves", "a caption")
    assert markdown.startswith("![loss curves](data:image/png;base64,") and markdown.endswith("\n\na caption")
    assert decode_markdown_image(markdown) == png


def test_loading_the_definitions_does_not_import_matplotlib() -> None:
    code = "import sys; from finetune_assets.definitions import defs; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_plots_are_in_the_metadata_of_a_demo_cycle(demo_instance) -> None:
    with dg.DagsterInstance.from_config(str(demo_instance.home)) as instance:
        for asset, key in PLOTS.items():
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None and event.asset_materialization is not None, asset
            value = event.asset_materialization.metadata[key]
            assert isinstance(value, dg.MarkdownMetadataValue), (asset, key)
            assert_small_png(decode_markdown_image(value.md_str))
