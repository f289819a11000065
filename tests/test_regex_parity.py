"""Regexes mean what they mean in blackbox_exporter: each case run through the real binary and ours.

Every case is a body check (``fail_if_body_not_matches_regexp``) against a body served by a
local server, so the verdict is blackbox's own "does this regex match this body"; a second table
holds patterns, and whether each loads at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import ClientSession, ClientTimeout, web
from pytest_aiohttp import AiohttpServer

from tests.metrics_util import parse, value
from tests.stack import Process, free_port, load_verdicts

# (pattern, body, does it match). The comment says where a backtracking engine or Python's re
# would answer otherwise.
MATCHES: list[tuple[str, bytes, bool]] = [
    ("^ok$", b"ok", True),
    ("^ok$", b"ok\n", False),  # $ is the end of the text unless (?m); Python's $ allows a final \n
    ("(?m)^ok$", b"x\nok\ny", True),
    (r"ok\z", b"ok\n", False),
    (r"\Aok", b"ok", True),
    (r"\d", "٣".encode(), False),  # \d is ASCII only
    (r"\pN", "٣".encode(), True),
    (r"\p{Greek}", "λ".encode(), True),
    (r"\P{Greek}", b"l", True),
    (r"\w", "é".encode(), False),  # \w is ASCII only
    (r"\s", b"\v", False),  # \s is [\t\n\f\r ]
    (r"\s", "\u00a0".encode(), False),
    (r"\bx\b", "éx".encode(), True),  # \b is an ASCII word boundary: é is no word character
    ("x{,3}", b"x{,3}", True),  # not a repetition: a literal
    ("x{,3}", b"xx", False),
    ("a{2,3}", b"aa", True),
    ("(?U)a+b", b"aab", True),
    (r"\x{263a}", "☺".encode(), True),
    (r"[\d-z]", b"-", True),  # \d, a dash and z
    ("(?i)STATUS", b"status", True),
    ("(?i)straße", b"STRASSE", False),  # simple case folding only
    ("a.b", b"a\nb", False),
    ("(?s)a.b", b"a\nb", True),
    ("a.b", b"a\xffb", True),  # an invalid byte is U+FFFD, which . matches
    ("^..$", b"\xe2\x82", True),  # a cut-off sequence is one U+FFFD per byte
    ("^.$", b"\xe2\x82", False),
    ("^.$", "é".encode(), True),  # characters, not bytes
    ("[^a]", "é".encode(), True),
    ("[[:alpha:]]+$", b"abc", True),
    ("[[:^digit:]]", b"1", False),
    (r"\Qa.b\E", b"a.b", True),
    (r"\Qa.b\E", b"axb", False),
    ("(?P<name>ok)", b"ok", True),
    ("^(a+)+$", b"a" * 40 + b"b", False),  # exponential for a backtracking engine
    ('.*"status": *"ok"', b'{"status": "ok"}', True),
    ('.*"status": *"ok"', b"a" * 150_000, False),  # quadratic for a backtracking engine
    (r"\s+$", b" " * 40_000 + b"x", False),
    ("", b"anything", True),
    ("a|b", b"b", True),
    ("(a|ab)(c|bcd)(d*)", b"abcd", True),
]

# (pattern, does it load). RE2 refuses what it cannot match in linear time.
LOADS: list[tuple[str, bool]] = [
    (r"(a)\1", False),  # backreference
    ("a(?=b)", False),  # lookahead
    ("a(?!b)", False),
    ("(?<=a)b", False),  # lookbehind
    ("(?<!a)b", False),
    ("a++", False),  # possessive
    ("a*+", False),
    ("(?>a)", False),  # atomic group
    (r"a\Z", False),
    ("a{1001}", False),
    ("a{1000}", True),
    (r"a\Cb", False),  # any byte: the C++ RE2 has it, Go does not
    ("(?P=name)", False),
    ("[[:foo:]]", False),
    ("a**", False),
    ("*a", False),
    (r"\pN\p{Greek}", True),
    ("(?U)a+", True),
    (r"\x{263a}", True),
    (r"[\d-z]", True),
    ("x{,3}", True),
    (r"\Qa(b\E", True),
    ("(?i)(?s)(?m)a", True),
]


def module(pattern: str) -> dict[str, object]:
    return {
        "prober": "http",
        "timeout": "5s",
        "http": {"preferred_ip_protocol": "ip4", "fail_if_body_not_matches_regexp": [pattern]},
    }


@pytest.fixture(scope="module")
def modules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parity") / "blackbox.yml"
    modules = {f"case{i}": module(pattern) for i, (pattern, _, _) in enumerate(MATCHES)}
    path.write_text(yaml.safe_dump({"modules": modules}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def blackbox(blackbox_binary: str, modules_file: Path) -> Iterator[str]:
    """The real blackbox_exporter with one module per case."""
    port = free_port()
    args = [blackbox_binary, f"--config.file={modules_file}", f"--web.listen-address=127.0.0.1:{port}"]
    process = Process("blackbox", args, f"http://127.0.0.1:{port}", modules_file.parent)
    try:
        process.wait_ready("/-/healthy")
        yield process.url
    finally:
        process.stop()


@pytest.fixture
async def bodies(aiohttp_server: AiohttpServer) -> str:
    async def case(request: web.Request) -> web.Response:
        return web.Response(body=MATCHES[int(request.match_info["n"])][1], content_type="text/plain")

    app = web.Application()
    app.router.add_get("/{n}", case)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def our_config(modules_file: Path) -> str:
    data = yaml.safe_load(modules_file.read_text(encoding="utf-8"))
    return yaml.safe_dump({"probe_allowlist": ["127.0.0.0/8"], "modules": data["modules"]})


async def verdict(session: ClientSession, base: str, bodies: str, n: int) -> bool:
    params = {"target": f"{bodies}/{n}", "module": f"case{n}"}
    async with session.get(f"{base}/probe", params=params) as response:
        text = await response.text()
        assert response.status == 200, text
    return value(parse(text), "probe_success") == 1.0


async def test_regexes_match_as_in_blackbox(blackbox: str, ours: str, bodies: str) -> None:
    """Every case gets the same verdict from blackbox_exporter and from us, and the expected one."""
    async with ClientSession(timeout=ClientTimeout(total=30)) as session:
        theirs = await asyncio.gather(*(verdict(session, blackbox, bodies, n) for n in range(len(MATCHES))))
        mine = await asyncio.gather(*(verdict(session, ours, bodies, n) for n in range(len(MATCHES))))
    table = [
        (pattern, body[:20], expected, got_theirs, got_mine)
        for (pattern, body, expected), got_theirs, got_mine in zip(MATCHES, theirs, mine, strict=True)
    ]
    differences = [row for row in table if not row[2] == row[3] == row[4]]
    assert not differences, "pattern, body, expected, blackbox, ours:\n" + "\n".join(map(repr, differences))


@pytest.mark.parametrize(("pattern", "loads"), LOADS, ids=[p for p, _ in LOADS])
def test_regex_loads_as_in_blackbox(pattern: str, loads: bool, blackbox_binary: str, tmp_path: Path) -> None:
    """blackbox_exporter's --config.check and our loader accept and refuse the same patterns."""
    path = tmp_path / "blackbox.yml"
    path.write_text(yaml.safe_dump({"modules": {"check": module(pattern)}}), encoding="utf-8")
    theirs, ours, why = load_verdicts(blackbox_binary, path)
    assert (theirs, ours) == (loads, loads), why
