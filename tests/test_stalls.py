"""Nothing a target or a client sends stalls the exporter: a canary keeps its schedule meanwhile.

Each test runs the real exporter process against targets that ask for expensive work (tests/
attack_servers.py, in a child process of its own) and watches a canary service on a 1 s
interval. The verdicts are counts and histogram buckets read from /metrics, never timings
taken by the test: the canary ran as often as its interval says, the exporter's own event-loop
lag histogram has no sample in the stalled range, and /-/healthy kept answering.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from tests.metrics_util import Series, parse, value
from tests.stack import Process, running_exporter, server_child, wait_until

ROOT = Path(__file__).resolve().parent.parent
# How long each attack runs while the canary is watched.
WINDOW = 5.0
# A loop sample later than this is a stall; the attacks used to cause stalls of many seconds.
STALL_BUCKET = "0.5"
# Late samples allowed at all: a busy test machine may give the exporter no core for a while
# (seen at a load average of 12 on 2 cores: 3 of 88 samples over 100 ms); an attack that holds
# the loop makes every sample late.
LATE_BUCKET = "0.1"
LATE_SHARE = 0.1


@pytest.fixture(scope="module")
def attackers() -> Iterator[dict[str, int]]:
    """The expensive targets, in a child process; their ports by kind."""
    with server_child("tests.attack_servers") as ports:
        yield ports


def attack_config(ports: dict[str, int]) -> dict[str, Any]:
    """A canary and, twice over, a service for every expensive answer."""
    web = f"http://127.0.0.1:{ports['http']}"
    modules: dict[str, Any] = {
        "nested": {"prober": "http", "http": {"fail_if_body_not_matches_regexp": ["^(a+)+$"]}},
        "letters": {"prober": "http", "http": {"fail_if_body_not_matches_regexp": ['.*"status": *"ok"']}},
        "spaces": {"prober": "http", "http": {"fail_if_body_matches_regexp": [r"\s+$"]}},
        "members": {"prober": "http", "http": {"fail_if_body_not_matches_regexp": ["status: ok"]}},
        "bomb": {
            "prober": "http",
            "http": {"body_size_limit": "16MiB", "fail_if_body_matches_regexp": ["x"]},
        },
        "lines": {"prober": "tcp", "tcp": {"query_response": [{"expect": "^(a+)+$"}]}},
        "dns_udp": {"prober": "dns", "dns": {"query_name": "example.org", "query_type": "A"}},
        "flow_json": {
            "prober": "flow",
            "flow": {
                "steps": [
                    {"name": "big", "url": "/json", "expect_json": [{"path": "$.status", "equals": "ok"}]}
                ]
            },
        },
        "vendor": {"prober": "statuspage"},
        "dns_tcp": {
            "prober": "dns",
            "dns": {
                "query_name": "example.org",
                "query_type": "A",
                "transport_protocol": "tcp",
                "validate_answer_rrs": {"fail_if_matches_regexp": ["(1+)+x"]},
            },
        },
    }
    targets = {
        "nested": f"{web}/nested",
        "letters": f"{web}/letters",
        "spaces": f"{web}/spaces",
        "members": f"{web}/members",
        "bomb": f"{web}/bomb",
        "lines": f"127.0.0.1:{ports['lines']}",
        "dns_udp": f"127.0.0.1:{ports['dns_udp']}",
        "flow_json": web,
        "vendor": f"{web}/summary.json",
        "dns_tcp": f"127.0.0.1:{ports['dns_tcp']}",
    }
    services: list[dict[str, Any]] = [
        {"name": "canary", "group": "canary", "prober": "http", "target": f"{web}/ok", "interval": "1s"}
    ]
    for name, target in targets.items():
        for copy in range(2):
            services.append(
                {
                    "name": f"{name}-{copy}",
                    "group": "attack",
                    "target": target,
                    "module": name,
                    "interval": "2s",
                    "timeout": "1500ms",
                }
            )
    return {
        "global": {"interval": "1s", "timeout": "800ms", "location": "test"},
        "probe_allowlist": ["127.0.0.0/8"],
        "modules": modules,
        "services": services,
    }


def get(url: str, auth: tuple[str, str] | None = None, timeout: float = 5.0) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def scrape(process: Process, auth: tuple[str, str] | None = None) -> Series:
    status, text = get(f"{process.url}/metrics", auth, timeout=30)
    assert status == 200, text
    return parse(text)


class HealthWatch:
    """Asks /-/healthy from a thread, one request after another with 100 ms between them.

    With the loop free an answer takes a millisecond or two, so the count of answers in the
    window says whether the exporter kept answering; a request unanswered after 10 s is a miss.
    """

    def __init__(self, url: str, auth: tuple[str, str] | None = None) -> None:
        self.url = url
        self.auth = auth
        self.answered = 0
        self.missed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                status, _ = get(self.url, self.auth, timeout=10.0)
            except OSError as err:
                self.missed.append(repr(err))
                continue
            if status == 200:
                self.answered += 1
            else:
                self.missed.append(f"status {status}")


def attack(health: HealthWatch, threads: list[threading.Thread], stop: threading.Event) -> HealthWatch:
    """Run the attacking threads for WINDOW seconds while ``health`` watches; then stop them."""
    with health:
        for thread in threads:
            thread.start()
        time.sleep(WINDOW)
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    return health


def assert_kept_schedule(before: Series, after: Series, health: HealthWatch) -> None:
    """The canary ran once a second, the loop never stalled, and /-/healthy always answered."""
    runs = value(after, "probe_runs_total", service="canary") - value(
        before, "probe_runs_total", service="canary"
    )
    assert runs >= WINDOW - 1, f"the canary ran {runs} times in {WINDOW}s"

    def lag(le: str) -> float:
        name = "outage_exporter_event_loop_lag_seconds_bucket"
        return value(after, name, le=le) - value(before, name, le=le)

    samples = lag("+Inf")
    assert samples >= WINDOW * 5, f"the loop watch took only {samples} samples"
    assert lag(STALL_BUCKET) == samples, f"{samples - lag(STALL_BUCKET)} loop samples over {STALL_BUCKET}s"
    late = samples - lag(LATE_BUCKET)
    assert late <= samples * LATE_SHARE, f"{late} of {samples} loop samples over {LATE_BUCKET}s"
    assert not health.missed, health.missed[:5]
    assert health.answered >= WINDOW * 5


def test_expensive_answers_do_not_stall_scheduled_probes(tmp_path: Path, attackers: dict[str, int]) -> None:
    """Regex bombs, huge bodies, gzip bombs, long lines and 4,060-record DNS answers leave the loop free."""
    with running_exporter(tmp_path, attack_config(attackers)) as process:
        wait_until(
            lambda: value(scrape(process), "probe_runs_total", service="dns_tcp-1") >= 1,
            30,
            "every attack service to have run",
        )
        before = scrape(process)
        with HealthWatch(f"{process.url}/-/healthy") as health:
            time.sleep(WINDOW)
        after = scrape(process)
    assert_kept_schedule(before, after, health)

    def verdict(service: str) -> float:
        return value(after, "probe_success", service=service)

    # The answers are judged as blackbox judges them.
    expected = {
        "nested": 0.0,  # the body does not match ^(a+)+$
        "letters": 0.0,  # no "status" in megabytes of letters
        "spaces": 1.0,  # \s+$ does not match: the body ends in x
        "members": 1.0,  # the second gzip member holds the text
        "bomb": 1.0,  # megabytes of zeros, no x
        "lines": 0.0,  # no line matches, and the server then goes quiet
        "dns_udp": 0.0,  # 65 KB over UDP without EDNS
        "flow_json": 1.0,  # 4 MB of JSON, and its status is ok
        "vendor": 1.0,  # a 4 MB summary.json says all is well
        "dns_tcp": 1.0,  # the same answer over TCP is fine, and no record matches (1+)+x
    }
    for name, success in expected.items():
        for copy in range(2):
            got = verdict(f"{name}-{copy}")
            assert got == success, f"{name}-{copy}: probe_success {got}"


def test_expensive_answers_through_probe_endpoint(tmp_path: Path, attackers: dict[str, int]) -> None:
    """/probe requests for the same answers, four at a time, leave the scheduled canary on time."""
    config = attack_config(attackers)
    config["services"] = config["services"][:1]
    web = f"http://127.0.0.1:{attackers['http']}"
    with running_exporter(tmp_path, config) as process:
        wait_until(
            lambda: value(scrape(process), "probe_runs_total", service="canary") >= 1, 30, "the canary"
        )
        before = scrape(process)
        stop = threading.Event()
        outcomes: list[str] = []

        def hammer(path: str, module: str) -> None:
            while not stop.is_set():
                status, text = get(f"{process.url}/probe?target={web}/{path}&module={module}", timeout=10)
                verdict = "ok" if status == 200 and value(parse(text), "probe_success") == 1 else "failed"
                outcomes.append(f"{module} {status} {verdict}")

        threads = [
            threading.Thread(target=hammer, args=args, daemon=True)
            for args in (("letters", "letters"), ("nested", "nested"), ("spaces", "spaces"), ("bomb", "bomb"))
        ]
        health = attack(HealthWatch(f"{process.url}/-/healthy"), threads, stop)
        after = scrape(process)
    assert_kept_schedule(before, after, health)
    assert {"letters 200 failed", "nested 200 failed", "spaces 200 ok", "bomb 200 ok"} <= set(outcomes), set(
        outcomes
    )


def test_wrong_password_flood_does_not_stall(tmp_path: Path, attackers: dict[str, int]) -> None:
    """Sixteen clients sending wrong passwords leave probing on time and the right password served."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=10)).decode()
    web_config = tmp_path / "web.yml"
    web_config.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    config = attack_config(attackers)
    config["services"] = config["services"][:1]
    good = ("prometheus", "right")
    with running_exporter(tmp_path, config, "--web.config.file", str(web_config), ready=False) as process:
        wait_until(lambda: get(f"{process.url}/-/healthy", good)[0] == 200, 30, "the exporter")
        wait_until(
            lambda: value(scrape(process, good), "probe_runs_total", service="canary") >= 1, 30, "the canary"
        )
        before = scrape(process, good)
        stop = threading.Event()
        refused: dict[int, int] = {}

        def flood(client: int) -> None:
            attempt = 0
            while not stop.is_set():
                attempt += 1
                status, _ = get(
                    f"{process.url}/-/healthy", ("prometheus", f"wrong-{client}-{attempt}"), timeout=10
                )
                refused[status] = refused.get(status, 0) + 1

        threads = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(16)]
        health = attack(HealthWatch(f"{process.url}/-/healthy", good), threads, stop)
        after = scrape(process, good)
    assert_kept_schedule(before, after, health)
    assert set(refused) <= {401, 429}, refused
    assert refused.get(401, 0) >= 1


def test_unknown_user_costs_a_real_check(tmp_path: Path) -> None:
    """An unknown user name is refused after a bcrypt check of the configured cost, like a known one."""
    from exporter.types import Secret
    from exporter.webconfig import BasicAuth

    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=6)).decode()
    auth = BasicAuth({"prometheus": Secret(hashed)})
    assert auth._cost() == 6

    async def run() -> tuple[bool | None, bool | None]:
        unknown = await auth.check("Basic " + base64.b64encode(b"nobody:right").decode())
        known = await auth.check("Basic " + base64.b64encode(b"prometheus:right").decode())
        return unknown, known

    try:
        assert asyncio.run(run()) == (False, True)
        assert auth._dummy is not None and auth._dummy.startswith(b"$2b$06$")
    finally:
        auth.close()


def test_malformed_requests_get_400_and_no_error_log(tmp_path: Path, attackers: dict[str, int]) -> None:
    """An oversized request line or header, or bytes that are not HTTP, get 400 and no traceback."""
    config = attack_config(attackers)
    config["services"] = config["services"][:1]
    with running_exporter(tmp_path, config) as process:
        host, port = process.url.removeprefix("http://").split(":")
        for request in (
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
            b"\x00\x01\x02 not http\r\n\r\n",
        ):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(request)
                assert sock.recv(64).startswith(b"HTTP/1.0 400 "), request[:20]
        assert get(f"{process.url}/-/healthy")[0] == 200
        logs = process.logs()
    assert "Traceback" not in logs and "level=error" not in logs, logs
