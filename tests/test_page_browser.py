"""The status page in a real headless Chromium: every state in words, history bars, chart, phone layout."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.page_fixtures import (
    ARTIFACTS,
    EXPECTED,
    FixtureServer,
    fixture_server,  # noqa: F401
    start_fixture_exporter,
    wait_all_probed,
)
from tests.stack import Process, wait_until

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
SLOTS = 90


def browser(phone: bool = False) -> Any:
    """A headless Chromium driven through Debian's chromedriver; a 390 px phone when asked."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium and chromium-driver are not installed (./scripts/test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    if phone:
        metrics = {"width": 390, "height": 844, "pixelRatio": 2, "mobile": True, "touch": True}
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
    else:
        options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def exporter(fixture_server: FixtureServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:  # noqa: F811
    process = start_fixture_exporter(fixture_server, tmp_path_factory.mktemp("page"))
    try:
        wait_all_probed(process)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture
def desktop() -> Iterator[Any]:
    driver = browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def phone() -> Iterator[Any]:
    driver = browser(phone=True)
    try:
        yield driver
    finally:
        driver.quit()


def full_screenshot(driver: Any, path: Path) -> None:
    """The whole page, not only the viewport, as a PNG."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "format": "png"})
    path.write_bytes(base64.b64decode(shot["data"]))


def console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def load_in_expected_states(driver: Any, url: str) -> None:
    """Load the page once every fixture service shows its expected state.

    A run can change a state between two checks: on a busy machine the exporter's own loop may
    stall during the slow service's probe, and that run is then (rightly) not called degraded.
    So the page is loaded again, within a bound, until one load shows every expected state.
    """
    wanted = {name: state for name, (state, _) in EXPECTED.items()}

    def shown() -> bool:
        driver.get(url)
        cards = driver.find_elements(By.CSS_SELECTOR, "li.svc")
        return {c.get_attribute("data-service"): c.get_attribute("data-state") for c in cards} == wanted

    wait_until(shown, 30.0, "a page load showing every fixture service in its expected state")


def test_page_shows_every_state_in_words_with_full_history_bars(
    exporter: Process, desktop: Any, artifacts: Path
) -> None:
    """At 1280 px: no console errors; each fixture service shows its state in words; 90 slots each."""
    load_in_expected_states(desktop, exporter.url + "/")
    assert desktop.title == "Fixture status"
    full_screenshot(desktop, artifacts / "page-1280.png")
    assert console_errors(desktop) == []
    for name, (state, words) in EXPECTED.items():
        card = desktop.find_element(By.CSS_SELECTOR, f'li.svc[data-service="{name}"]')
        assert card.get_attribute("data-state") == state
        badge = card.find_element(By.CSS_SELECTOR, ".svc-head .state")
        assert badge.text.endswith(words), (name, badge.text)
        slots = card.find_elements(By.CSS_SELECTOR, "ol.bar > li")
        assert len(slots) == SLOTS
        assert any("s-none" not in (slot.get_attribute("class") or "") for slot in slots)
    vendor = desktop.find_element(By.CSS_SELECTOR, 'li.svc[data-service="vendor-cloud"] .vendor')
    assert vendor.text == "Major outage"
    reports = desktop.find_element(By.CSS_SELECTOR, 'li.svc[data-service="reports"] .why')
    assert reports.text.startswith("Moving the reporting database, until 2099-01-01")
    payments = desktop.find_element(By.CSS_SELECTOR, 'li.svc[data-service="payments"] .why')
    assert payments.text.startswith("Failing since ") and "http status" in payments.text
    verdicts = {
        section.get_attribute("data-group"): section.get_attribute("data-verdict")
        for section in desktop.find_elements(By.CSS_SELECTOR, "section.group")
    }
    # shop: one of three down (partial); back-office only in maintenance; the vendor says major.
    assert verdicts == {"shop": "partial", "back-office": "maintenance", "vendors": "major"}
    notice = desktop.find_element(By.CSS_SELECTOR, ".notice").text
    assert "30d" in notice and "status_page.prometheus_url" in notice


def test_detail_page_draws_a_latency_chart(exporter: Process, desktop: Any, artifacts: Path) -> None:
    """A service's page draws its recent latency as SVG and lists its failures."""
    desktop.get(exporter.url + "/services/search")
    full_screenshot(desktop, artifacts / "detail-search-1280.png")
    assert console_errors(desktop) == []
    chart = desktop.find_element(By.CSS_SELECTOR, "svg.chart")
    points = chart.find_element(By.CSS_SELECTOR, "polyline.latency").get_attribute("points") or ""
    assert len(points.split()) >= 2
    assert chart.find_elements(By.CSS_SELECTOR, "line.objective")
    assert chart.size["width"] > 600
    desktop.get(exporter.url + "/services/payments")
    rows = desktop.find_elements(By.CSS_SELECTOR, "table.failures tbody tr")
    assert rows and "http_status" in rows[0].text
    full_screenshot(desktop, artifacts / "detail-payments-1280.png")


def test_phone_layout_has_no_horizontal_scroll(exporter: Process, phone: Any, artifacts: Path) -> None:
    """At 390 px the page and a detail page fit the width; every state still reads in words."""
    for path, shot in (("/", "page-390.png"), ("/services/payments", "detail-payments-390.png")):
        phone.get(exporter.url + path)
        width = phone.execute_script("return window.innerWidth")
        scroll = phone.execute_script("return document.documentElement.scrollWidth")
        assert width == 390
        assert scroll <= width, f"{path} scrolls sideways: {scroll}px wide"
        full_screenshot(phone, artifacts / shot)
        assert console_errors(phone) == []
    load_in_expected_states(phone, exporter.url + "/")
    states = [e.text for e in phone.find_elements(By.CSS_SELECTOR, "li.svc .svc-head .state")]
    assert sorted(s.split(" ", 1)[1] for s in states) == sorted(words for _, words in EXPECTED.values())
