"""bench/timing.py's `write_section`: the published figures in docs/performance.md are whatever a bench printed,
between its markers, and nothing else in the file changes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from finetune_assets.errors import FinetuneAssetsError

TIMING = Path(__file__).resolve().parents[1] / "bench" / "timing.py"


@pytest.fixture(scope="module")
def timing() -> ModuleType:
    """bench/ is not a package: load its helper module by path, as the bench scripts see it."""
    spec = importlib.util.spec_from_file_location("bench_timing", TIMING)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


PAGE = """# Performance

Prose before.

<!-- bench:alpha -->
```text
old alpha figure
```
<!-- /bench:alpha -->

Prose between.

<!-- bench:beta -->
```text
beta figure
```
<!-- /bench:beta -->

Prose after.
"""


def test_replaces_only_the_named_section(timing: ModuleType, tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text(PAGE)
    timing.write_section("alpha", ["machine: 2 cores", "new alpha: 1.23 s vs peer 1.00 s = 1.23x"], page)
    expected = PAGE.replace("old alpha figure", "machine: 2 cores\nnew alpha: 1.23 s vs peer 1.00 s = 1.23x")
    assert page.read_text() == expected


def test_appends_a_missing_section_and_is_idempotent(timing: ModuleType, tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text(PAGE)
    lines = ["gamma: 42 ms  ", "", "ratio 0.50x"]
    timing.write_section("gamma", lines, page)
    once = page.read_text()
    assert once == PAGE + "\n<!-- bench:gamma -->\n```text\ngamma: 42 ms\n\nratio 0.50x\n```\n<!-- /bench:gamma -->\n"
    timing.write_section("gamma", lines, page)
    timing.write_section("alpha", ["old alpha figure"], page)  # the same lines: no change at all
    assert page.read_text() == once


def test_creates_the_page_and_refuses_broken_markers(timing: ModuleType, tmp_path: Path) -> None:
    page = tmp_path / "new.md"
    timing.write_section("alpha", ["x"], page)
    assert page.read_text() == "<!-- bench:alpha -->\n```text\nx\n```\n<!-- /bench:alpha -->\n"
    page.write_text("<!-- /bench:alpha -->\n<!-- bench:alpha -->\n")
    with pytest.raises(FinetuneAssetsError, match="markers"):
        timing.write_section("alpha", ["x"], page)
    with pytest.raises(FinetuneAssetsError, match="section name"):
        timing.write_section("Alpha -->", ["x"], page)


def test_report_prints_and_keeps_lines_after_the_machine(
    timing: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    out = timing.Report()
    out("one\ntwo")
    assert out.lines[0].startswith("machine: ") and "cores" in out.lines[0] and "Python" in out.lines[0]
    assert out.lines[1:] == ["one", "two"]
    assert capsys.readouterr().out.splitlines()[1:] == ["one", "two"]
