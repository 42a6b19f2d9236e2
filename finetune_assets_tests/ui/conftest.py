"""A real `dagster-webserver` and `dagster-daemon` (what `make dev` runs) over a copy of the demo instance, and
headless Chromium (Debian's `chromium` package) driven by Playwright. Screenshots go to test-artifacts/."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("FINETUNE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 180
UI_TIMEOUT_MS = 60_000
"""Generous for a 2-core machine that is also running the code server, the daemon and a run."""
expect.set_options(timeout=UI_TIMEOUT_MS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the process group this fixture started (the server and the code server it spawned)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def ui_world(demo_instance, tmp_path_factory: pytest.TempPathFactory):  # -> DemoInstance
    """A copy of the demo instance that the browser may change (it launches runs)."""
    return demo_instance.copy_to(tmp_path_factory.mktemp("ui") / "world", training_data_threshold=20)


@pytest.fixture(scope="module")
def dagster_ui(ui_world) -> Iterator[str]:
    """`dagster-webserver` on a free loopback port plus `dagster-daemon` (runs launched in the UI are queued and
    the daemon starts them, as with `make dev`); both stopped at the end, whatever happened."""
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = ui_world.env()
    logs = {name: ui_world.root / f"{name}.log" for name in ("webserver", "daemon")}
    commands = {
        "webserver": [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        "daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in commands.items():
            with logs[name].open("wb") as log:
                processes[name] = subprocess.Popen(
                    command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        deadline = time.monotonic() + SERVER_START_S
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}:\n{_tail(logs[name])}")
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not answer in {SERVER_START_S} s:\n{_tail(logs['webserver'])}")
            time.sleep(0.5)
        yield url
    finally:
        for process in processes.values():
            _stop(process)
        ARTIFACTS.mkdir(exist_ok=True)
        for name, log in logs.items():
            shutil.copy(log, ARTIFACTS / f"{name}.log")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def _loopback_only(route: Route) -> None:
    """The UI must work offline: anything but the local server is refused (and would show as a failure)."""
    host = urlparse(route.request.url).hostname
    if route.request.url.startswith("data:") or host in ("127.0.0.1", "localhost"):
        route.continue_()
    else:
        route.abort()


@pytest.fixture(scope="module")
def first_visit(browser: Browser, dagster_ui: str) -> None:
    """A new instance greets its first visitor with a community sign-up dialog: skip it, as a person would."""
    context = browser.new_context(base_url=dagster_ui)
    context.route("**/*", _loopback_only)
    page = context.new_page()
    page.goto("/")
    with contextlib.suppress(PlaywrightTimeout):  # not shown: already seen on this instance
        page.get_by_role("button", name="Skip").click(timeout=30_000)
    context.close()


@pytest.fixture
def page(browser: Browser, dagster_ui: str, first_visit: None, artifacts: Path, request) -> Iterator[Page]:
    context = browser.new_context(base_url=dagster_ui, viewport={"width": 1400, "height": 900})
    context.route("**/*", _loopback_only)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    # The sign-up dialog can come back later (its server-side "seen" flag is not always written in time, on a
    # loaded machine): whenever it shows, skip it before the next action, as a person would.
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"), lambda: page.get_by_role("button", name="Skip").click()
    )
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        page.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"), full_page=True)
    context.close()
