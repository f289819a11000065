"""The public status page from a real exporter behind --web.config.file: served redacted, the rest locked."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.page_fixtures import (
    EXPECTED,
    SECRET_PATH,
    FixtureServer,
    fixture_server,  # noqa: F401
    start_fixture_exporter,
    wait_all_probed,
)
from tests.stack import Process

PASSWORD = "wall-pw-5Tg8"
PUBLIC = """  public:
    enabled: true
    labels: [owner]
"""


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code), err.read()


@pytest.fixture(scope="module")
def exporter(fixture_server: FixtureServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("public")
    web_config = tmp / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web_config.write_text(f"basic_auth_users:\n  admin: '{hashed}'\n")
    flags = ("--web.config.file", str(web_config))
    process = start_fixture_exporter(fixture_server, tmp, PUBLIC, flags, AUTH)
    try:
        wait_all_probed(process, AUTH)
        yield process
    finally:
        process.stop()


AUTH = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}


def test_public_paths_answer_without_credentials_and_leak_nothing(
    exporter: Process,
    fixture_server: FixtureServer,  # noqa: F811
) -> None:
    """/, every service page, badge and asset answer 200 without credentials, with no target in them."""
    paths = ["/", "/favicon.ico", "/assets/style.css"]
    for name in EXPECTED:
        paths += [f"/services/{name}", f"/badge/{name}/status.svg", f"/badge/{name}/uptime.json"]
    served = []
    for path in paths:
        status, body = fetch(exporter.url + path)
        assert status == 200, path
        served.append(body)
    everything = b"\n".join(served)
    host_port = fixture_server.url.removeprefix("http://").encode()
    for secret in (SECRET_PATH.encode(), host_port, b"127.0.0.1", PASSWORD.encode(), b"payments-team"):
        assert secret not in everything, secret
    # The error text of the failing service ("status code 503 is not 2xx") is left out too.
    assert b"is not 2xx" not in everything
    assert b"Down" in served[0] and b"Sign in for the full view" in served[0]


def test_everything_else_needs_credentials(exporter: Process) -> None:
    """Metrics, config, the JSON API and probes stay behind basic auth; with it the full page shows."""
    for path in ("/metrics", "/config", "/api/v1/status", "/api/v1/services/checkout", "/login"):
        status, _ = fetch(exporter.url + path)
        assert status == 401, path
    status, body = fetch(exporter.url + "/", AUTH)
    assert status == 200 and SECRET_PATH.encode() in body and b"payments-team" in body
    status, body = fetch(exporter.url + "/services/payments", AUTH)
    assert status == 200 and b"is not 2xx" in body


def test_public_page_reads_in_a_browser(exporter: Process, tmp_path: Path) -> None:
    """The redacted page loads in Chromium without console errors and still says every state."""
    from tests.test_page_browser import browser, console_errors

    driver = browser()
    try:
        driver.get(exporter.url + "/")
        assert console_errors(driver) == []
        from selenium.webdriver.common.by import By

        states = {
            card.get_attribute("data-service"): card.get_attribute("data-state")
            for card in driver.find_elements(By.CSS_SELECTOR, "li.svc")
        }
        assert states == {name: state for name, (state, _) in EXPECTED.items()}
        assert not driver.find_elements(By.CSS_SELECTOR, ".target")
    finally:
        driver.quit()
