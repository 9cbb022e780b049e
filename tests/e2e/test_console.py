"""The web console in headless Chromium against `assay serve`: upload a CSV, watch it become
ready, run metrics + anomalies + normalize, watch the job complete, look at the plots and
download the normalized file, on a desktop and a phone-width screen, with a key when the
server asks for one, and no error in the browser's console. Screenshots are kept in
ASSAY_TEST_ARTIFACTS (default: test-artifacts/) under console/."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    ROOT,
    Stack,
    assay,
    base_env,
    create_key,
    free_port,
    stop,
    wait_until_healthy,
)
from tests.services import services_required

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CSV = "a,b,city\n" + "".join(
    f"{(i * 7919) % 1000 / 10},{500.0 if i % 250 == 3 else (i * 31) % 97 / 10},c{i % 3}\n"
    for i in range(2000)
)


def _missing(reason: str) -> None:
    if services_required():
        pytest.fail(f"{reason} (CI=true or ASSAY_REQUIRE_SERVICES=1: the browser is required)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (uv sync installs it with the dev group)")
    if CHROMIUM is None:
        _missing("no chromium binary (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("ASSAY_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Page:
    """A browser page that records every console error and uncaught exception."""

    def __init__(self, browser: Any, width: int, height: int) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def fits_the_screen(self) -> bool:
        width: bool = self.page.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
        return width


def test_upload_run_watch_and_look_at_the_results(
    embedded_stack: Stack, browser: Any, shots: Path, tmp_path: Path
) -> None:
    source = tmp_path / "readings.csv"
    source.write_text(CSV)
    view = Page(browser, 1280, 900)
    page = view.page
    page.goto(f"{embedded_stack.base_url}/")
    page.wait_for_selector("h1:has-text('Datasets')")
    page.set_input_files("#file", str(source))
    page.click("form.upload button[type=submit]")
    page.wait_for_selector("text=Open readings.csv", timeout=60_000)
    assert "ready: 2,000 rows" in page.inner_text("form.upload")
    page.screenshot(path=str(shots / "datasets.png"), full_page=True)

    page.click("text=Open readings.csv")
    page.wait_for_selector("h2:has-text('Preview') + div table")
    assert [
        c.strip()
        for c in page.locator("h2:has-text('Schema') + div td:first-child").all_inner_texts()
    ] == ["a", "b", "city"]
    page.screenshot(path=str(shots / "dataset.png"), full_page=True)

    page.click("text=Run a job")
    page.wait_for_selector("#add-processor")
    for processor in ("metrics", "anomalies", "normalize"):
        page.select_option("#add-processor", processor)
        page.click("text=Add step")
    steps = page.locator("li.step-form")
    steps.nth(1).locator("select").first.select_option("zscore")
    steps.nth(2).get_by_label("scale", exact=True).check()
    page.screenshot(path=str(shots / "new-job.png"), full_page=True)
    page.click("button:has-text('Run')")

    page.wait_for_selector("h2:has-text('Results')", timeout=120_000)
    assert "completed" in page.inner_text(".job-state")
    assert page.locator("text=step_completed").count() == 3  # the live event history
    charts = page.locator("svg.chart")
    titles = [charts.nth(i).get_attribute("aria-label") for i in range(charts.count())]
    assert "a: distribution" in titles and "city: top values" in titles
    assert "b: 8 flagged (red)" in titles  # the 500.0 values, marked on b's distribution
    assert page.locator("svg.chart[aria-label='b: 8 flagged (red)'] line.mark").count() == 8
    assert {"a: original", "a: minmax"} <= set(titles)
    page.screenshot(path=str(shots / "job.png"), full_page=True)
    with page.expect_download() as downloaded:
        page.locator("tr:has-text('normalized.csv') button").click()
    saved = tmp_path / "normalized.csv"
    downloaded.value.save_as(saved)
    assert saved.read_text().splitlines()[0] == "a,b,city"
    assert len(saved.read_text().splitlines()) == 2001

    # The dataset's page now shows its profile from that metrics run.
    page.goto(f"{embedded_stack.base_url}/#/datasets")
    page.click("a:has-text('readings.csv')")
    page.wait_for_selector("h2:has-text('Profile') + div svg.chart")
    assert view.errors == []

    phone = Page(browser, 390, 844)
    pages = {"datasets": "form.upload", "jobs": "table", "jobs/new": "#add-processor"}
    for path, ready in pages.items():
        phone.page.goto(f"{embedded_stack.base_url}/#/{path}")
        phone.page.wait_for_selector(ready)
        assert phone.fits_the_screen(), path
        phone.page.screenshot(path=str(shots / f"phone-{path.replace('/', '-')}.png"))
    assert phone.errors == []


def test_every_control_is_reachable_from_the_keyboard(embedded_stack: Stack, browser: Any) -> None:
    view = Page(browser, 1280, 900)
    view.page.goto(f"{embedded_stack.base_url}/#/jobs/new")
    view.page.wait_for_selector("#add-processor")
    reached = []
    for _ in range(40):
        view.page.keyboard.press("Tab")
        reached.append(
            view.page.evaluate("document.activeElement.id || document.activeElement.textContent")
        )
    assert {"job-dataset", "job-name", "add-processor", "Add step", "Run"} <= set(reached)
    view.page.goto(f"{embedded_stack.base_url}/#/datasets")
    view.page.wait_for_selector("#file")
    reached = []
    for _ in range(15):
        view.page.keyboard.press("Tab")
        reached.append(view.page.evaluate("document.activeElement.id"))
    assert "file" in reached  # the file chooser behind the drop zone
    assert view.errors == []


def test_a_server_with_keys_asks_for_one_and_the_console_uses_it(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("console-keys")
    env = base_env(workdir) | {"ASSAY_AUTH_REQUIRED": "true"}
    key = create_key(env, workdir, "alice", "write")
    port = free_port()
    stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, workdir=workdir, api_key=key)
    stack.logs.append(workdir / "serve.log")
    stack.processes.append(assay(["serve", "--port", str(port)], env, stack.logs[-1], workdir))
    try:
        wait_until_healthy(stack)
        view = Page(browser, 1280, 900)
        view.page.goto(f"{stack.base_url}/#/datasets")
        view.page.wait_for_selector("#signin:not([hidden])")
        assert "needs an API key" in view.page.inner_text("#notice")
        view.page.fill("#api-key", key)
        view.page.click("#signin button")
        view.page.wait_for_selector("text=No datasets yet")
        assert view.page.is_visible("#signout")
        # The 401 before signing in is the only error the browser logged.
        assert all("401" in error for error in view.errors), view.errors
    finally:
        stop(stack)
