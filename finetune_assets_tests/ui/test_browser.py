"""The Dagster UI as a person uses it, in headless Chromium against a real webserver (ui/conftest.py): the
asset graph, a materialization launched from the UI with its checks, lineage, and plots in the metadata."""

from __future__ import annotations

import io
import itertools
import os
import re
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from finetune_assets.resources.store import StoreResource

pytestmark = [pytest.mark.slow, pytest.mark.browser]
REPO = Path(__file__).resolve().parents[2]
CHAIN = [
    "production_model",
    "ab_test_outcome",
    "ab_test",
    "evaluation_scores",
    "fine_tuned_model",
    "training_data",
    "generated_posts",
]
TRAINING_DATA_CHECKS = [
    "enough_examples",
    "engagement_floor",
    "impressions_floor",
    "chat_format",
    "token_limit",
    "no_duplicates",
    "no_pii",
    "cost_within_budget",
]
PLOTS = {
    "training_data": "engagement_rate_plot",
    "fine_tuned_model": "loss_plot",
    "evaluation_scores": "evaluation_plot",
    "ab_test_outcome": "lift_plot",
}
UI_PARTITION = "2026-11-08"
"""A cycle the demo did not touch: the new week's posts (demo_world.NEXT_WEEK) are its examples."""
RUN_TIMEOUT_MS = 240_000


def graph_node(page: Page, asset: str):
    return page.locator("[data-svg-viewport]").get_by_text(asset, exact=True).first


def node_box(page: Page, asset: str) -> dict[str, float] | None:
    node = graph_node(page, asset)
    if not node.count():  # the graph draws only the nodes near the view
        return None
    # the node's card: the HTML inside the SVG foreignObject (whose own box ignores the zoom in Chromium)
    return node.locator("xpath=ancestor::*[local-name()='foreignObject'][1]/*[1]").bounding_box()


def whole_chain_in_view(page: Page) -> bool:
    view = page.locator("[data-svg-viewport]").bounding_box()
    boxes = [node_box(page, asset) for asset in CHAIN]
    if view is None or not all(boxes):
        return False
    return all(
        view["x"] + 10 <= b["x"] and b["x"] + b["width"] <= view["x"] + view["width"] - 60  # zoom controls
        for b in boxes
        if b
    )


def test_the_asset_graph_shows_all_seven_assets(page: Page, artifacts: Path) -> None:
    page.goto("/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    for asset in CHAIN:
        expect(graph_node(page, asset)).to_be_visible()
    page.screenshot(path=str(artifacts / "asset-graph.png"))
    if os.environ.get("FINETUNE_UPDATE_DOCS_SCREENSHOT"):
        save_readme_screenshot(page, REPO / "docs" / "asset-graph.png")


def save_readme_screenshot(page: Page, target: Path) -> None:
    """The README's picture: the graph laid out top to bottom, every node in full (name, checks, partitions)."""
    page.set_viewport_size({"width": 1300, "height": 2000})
    page.locator('[aria-label="settings"]').last.click()  # the graph's settings, beside the zoom controls
    page.get_by_text("Change graph to vertical orientation").click()
    page.reload()
    for asset in CHAIN:
        expect(graph_node(page, asset)).to_be_visible()
    graph = page.locator("[data-svg-viewport]")
    expect(graph.get_by_text("7 / 7 Passed")).to_be_visible()  # training_data's checks: the data has loaded
    expect(graph.get_by_text("Loading…")).to_have_count(0)
    page.wait_for_timeout(1500)  # let the zoom-to-fit animation settle
    boxes = [node_box(page, asset) for asset in CHAIN]
    assert all(boxes)
    left = min(b["x"] for b in boxes if b) - 16
    top = min(b["y"] for b in boxes if b) - 16
    right = max(b["x"] + b["width"] for b in boxes if b) + 16
    bottom = max(b["y"] + b["height"] for b in boxes if b) + 16
    png = page.screenshot(clip={"x": left, "y": top, "width": right - left, "height": bottom - top})
    with Image.open(io.BytesIO(png)) as image:  # a 256-colour palette: a third of the bytes, same look
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    target.parent.mkdir(parents=True, exist_ok=True)
    small.save(target, optimize=True)


def test_materialize_training_data_for_a_partition_and_see_its_checks_pass(page: Page, artifacts: Path, ui_world):
    page.goto("/assets/training_data")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Launch runs to materialize training_data")).to_be_visible()
    partitions = dialog.get_by_role("textbox").first
    partitions.fill(UI_PARTITION)
    partitions.press("Enter")
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    page.screenshot(path=str(artifacts / "training-data-launch.png"))
    dialog.get_by_role("button", name="Launch 1 run").click()

    toast = page.get_by_role("listitem").filter(has_text="Launched run")
    toast.get_by_role("link", name="View", exact=True).click()
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}.*"))
    run_id = page.url.split("/runs/")[1][:36]
    expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_text(f"partition: {UI_PARTITION}")).to_be_visible()
    expect(page.get_by_text(f"{len(TRAINING_DATA_CHECKS)} checks")).to_be_visible()
    page.get_by_placeholder("Filter…").fill("type:ASSET_CHECK_EVALUATION")
    page.keyboard.press("Enter")
    for check in TRAINING_DATA_CHECKS:
        expect(page.get_by_text(f"Check {check} succeeded for materialization of training_data").first).to_be_visible()
    page.screenshot(path=str(artifacts / "training-data-run.png"))

    page.goto("/assets/training_data")
    page.get_by_role("tab", name="Checks").click()
    expect(page.get_by_text(f"Checks ({len(TRAINING_DATA_CHECKS)})")).to_be_visible()
    for check in TRAINING_DATA_CHECKS:
        expect(page.get_by_text(check, exact=True).first).to_be_visible()
    expect(page.get_by_text("Succeeded", exact=True)).to_have_count(len(TRAINING_DATA_CHECKS))
    page.screenshot(path=str(artifacts / "training-data-checks.png"))

    # the run the UI launched did the real work: a validated dataset for that cycle, from the new week's posts
    dataset = StoreResource(state_dir=str(ui_world.state_dir)).get().latest_dataset(UI_PARTITION)
    assert dataset is not None and dataset.status == "validated" and dataset.n_train >= 20, run_id


def test_follow_production_model_upstream_lineage_to_generated_posts(page: Page, artifacts: Path) -> None:
    page.set_viewport_size({"width": 2200, "height": 900})  # a wide screen: seven nodes in a row
    page.goto("/assets/production_model")
    page.get_by_role("tab", name="Lineage").click()
    page.get_by_text("Upstream", exact=True).click()
    page.get_by_text("All", exact=True).click()
    expect(page).to_have_url(re.compile(r"lineageScope=upstream"))
    any_node = page.locator("[data-svg-viewport]").get_by_text(re.compile(rf"^({'|'.join(CHAIN)})$"))
    expect(any_node.first).to_be_visible()
    for _ in range(25):  # zoom out, as a person would, until the whole chain is on screen
        if whole_chain_in_view(page):
            break
        page.locator('[aria-label="zoom_out"]').click()
        page.wait_for_timeout(400)
    page.wait_for_timeout(1500)  # the zoom animates
    assert whole_chain_in_view(page), "the upstream lineage does not fit on a 2200-pixel-wide screen"
    page.screenshot(path=str(artifacts / "production-model-upstream-lineage.png"))
    page.set_viewport_size({"width": 1400, "height": 900})

    # and on foot: each asset page links its upstream asset, from the model back to the app's posts
    page.goto("/assets/production_model")
    for here, upstream in itertools.pairwise(CHAIN):
        expect(page).to_have_url(re.compile(rf".*/assets/{here}(\?.*)?$"))
        expect(page.get_by_text("Upstream assets", exact=True)).to_be_visible()
        page.locator(f'a[href="/assets/{upstream}"]').first.click()
    expect(page).to_have_url(re.compile(r".*/assets/generated_posts(\?.*)?$"))
    expect(page.get_by_text("External Asset")).to_be_visible()  # generated_posts: the app's table
    page.screenshot(path=str(artifacts / "generated-posts.png"))


@pytest.mark.parametrize("asset", list(PLOTS))
def test_plots_render_in_the_asset_metadata(page: Page, artifacts: Path, asset: str) -> None:
    page.goto(f"/assets/{asset}")
    row = page.locator("tr", has_text=PLOTS[asset])
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator('img[src^="data:image/png;base64,"]')
    expect(image).to_be_visible()
    loaded = image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
    assert loaded == [True, 540, 252]
    page.get_by_role("dialog").screenshot(path=str(artifacts / f"{asset}-{PLOTS[asset]}.png"))
