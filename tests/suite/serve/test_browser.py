"""The pages in a real browser: Playwright driving the system Chromium (``playwright install``
cannot download browsers here). Each test checks what a user sees — rows, a report whose plots
decoded, a diff, a plot with one point per run, a table that follows a run without a reload — and
that no request leaves the server."""

from __future__ import annotations

import shutil
import threading
from datetime import datetime
from urllib.parse import quote

import pytest
from precision_suite.serve.server import make_server

from tests.helpers.records import make_record
from tests.suite.serve.conftest import OTHER, RUNS, TOKEN, write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000

if CHROMIUM is None:
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[serve]')")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, server_url):
    """A fresh page that records every URL it requests: each must be the server's (or inline data)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    yield page
    context.close()
    outside = [url for url in requested if not url.startswith((server_url, "data:", "about:"))]
    assert not outside, outside


def test_runs_list_renders_the_folder(page, server_url):
    page.goto(server_url + "/")
    rows = page.locator("#runs table tr")
    assert rows.count() == 1 + len(RUNS) + 1  # header, the fixture's runs
    names = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(1, rows.count())]
    assert names == ["nightly/20260103-090000", "20260102-090000", "20260101-090000", OTHER]  # newest first
    first = rows.nth(1).inner_text()
    assert "beta" in first and "abc1234" in first


def test_filter_by_model(page, server_url):
    page.goto(server_url + "/")
    page.select_option("#model", "cnn")
    page.click("#filters button")
    page.wait_for_url("**model=cnn**")
    assert page.locator("#runs table tr").count() == 2 and OTHER in page.locator("#runs").inner_text()


def test_clicking_a_run_opens_its_report_with_plots(page, server_url, runs_dir):
    page.goto(server_url + "/")
    page.click("text=20260101-090000")
    page.wait_for_url(f"**/run/{quote('20260101-090000')}")
    assert page.locator("a", has_text="results.jsonl").count() == 1
    report = page.frame_locator("#report")
    report.locator("h1").wait_for()
    plots = len(list((runs_dir / "20260101-090000" / "plots").glob("*.png")))
    images = report.locator("img")
    assert plots > 0 and images.count() == plots
    widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert all(w > 0 for w in widths), widths


def test_compare_shows_the_diff(page, server_url):
    page.goto(server_url + "/")
    page.select_option("#old", "20260101-090000")
    page.select_option("#new", "20260102-090000")
    page.click("#compare-form button")
    page.wait_for_url("**/compare?**")
    diff = page.locator("#diff")
    assert "Rows" in diff.inner_text()
    # accuracy, train loss, memory and speedup of each of the 5 compared non-baseline and 2 baseline rows
    rows = diff.locator("table").last.locator("tr")
    assert rows.count() > 1 and "accuracy" in rows.nth(1).inner_text()


def test_history_plot_has_one_point_per_run(page, server_url):
    page.goto(server_url + "/history")
    page.click('a[href*="row=mlp%2Fdigits%2Fcpu%2Ftorch-amp%2Fbf16-mixed"]')
    page.wait_for_url("**/history?row=**")
    accuracy_plot = page.locator("figure svg").first
    points = accuracy_plot.locator("a")
    assert points.count() == len(RUNS)
    hrefs = sorted(points.nth(i).get_attribute("xlink:href") or points.nth(i).get_attribute("href") for i in range(3))
    assert hrefs == sorted(f"/run/{quote(name)}" for name in RUNS)
    # two machines: two series in the legend
    legend = accuracy_plot.text_content()
    assert "alpha" in legend and "beta" in legend
    points.first.locator("path, use").first.click()
    page.wait_for_url("**/run/**")


def test_runs_list_follows_new_records_without_reload(page, server_url, runs_dir):
    page.goto(server_url + "/")
    page.evaluate("window.stayed = true")
    rows = page.locator("#runs table tr")
    assert rows.count() == 1 + len(RUNS) + 1
    path = write_run(runs_dir, "live-run", [make_record("torch-amp", "fp32", 0)], datetime(2027, 1, 1))
    try:
        sync_api.expect(rows).to_have_count(len(RUNS) + 3)  # polls the page (no script: the page's CSP forbids eval)
        assert page.evaluate("window.stayed")  # the same page: refreshed, not reloaded
        assert "live-run" in rows.nth(1).inner_text()
    finally:
        shutil.rmtree(path)


def test_start_page_shows_a_bad_override_in_one_line(page, server_url):
    page.goto(server_url + f"/start?token={TOKEN}")
    page.select_option("#config", "smoke.yaml")
    page.fill("#overrides", "train.epochs=ten")
    page.click("#start")
    error = page.locator("#error")
    assert "train.epochs: expected an integer" in error.inner_text()


@pytest.mark.slow
def test_starting_a_smoke_run_ends_with_its_row(browser, tmp_path):
    """The whole loop: start configs/smoke.yaml from the page, follow it, find its row in the list."""
    root = tmp_path / "runs"
    root.mkdir()
    server = make_server(root, "127.0.0.1", 0, token=TOKEN)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url + f"/start?token={TOKEN}")
        page.select_option("#config", "smoke.yaml")
        page.click("#start")
        page.wait_for_url("**/run/**")
        name = page.url.rsplit("/run/", 1)[1]
        page.goto(url + "/")
        sync_api.expect(page.locator("#progress")).to_contain_text("finished", timeout=300_000)
        row = page.locator("#runs table tr", has_text="smoke.yaml")
        row.wait_for()
        assert "report" in row.inner_text() and name in row.inner_text()
        assert "exit code 0" in page.locator("#progress").inner_text()
        assert (root / name / "report.html").exists()
    finally:
        context.close()
        server.shutdown()
        server.server_close()
        server.app.launcher.stop()
        thread.join(10)
