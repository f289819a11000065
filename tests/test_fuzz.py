"""Bad input: any YAML gives a Config or a located ConfigError, and no request makes the web app fail."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import string
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient, AiohttpServer

from exporter import config as config_module
from exporter.config import Config, parse_config
from exporter.errors import ConfigError
from exporter.web import make_app
from exporter.yamlread import yaml_key

# On a failure hypothesis imports its patch writer, whose dependencies (libcst, where installed)
# warn on import; under filterwarnings=error that would hide the failing example, so load it now.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore")
    import hypothesis.extra._patching  # noqa: F401

# No example database: the runs leave nothing behind in the work tree.
EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the config loader -------------------------------------------------------------------------


def _schema_keys() -> list[str]:
    """Every key the config schema knows, found by walking its dataclasses."""
    keys: set[str] = {"global", "probe_allowlist", "modules", "services", "service_files", "<<"}
    pending: list[Any] = [config_module.GlobalConfig, config_module.ServiceFile, config_module.ModuleFile]
    done: set[Any] = set()
    while pending:
        cls = pending.pop()
        if cls in done:
            continue
        done.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            keys.add(yaml_key(f))
            stack = [hints[f.name]]
            while stack:
                tp = stack.pop()
                stack.extend(typing.get_args(tp))
                if dataclasses.is_dataclass(tp):
                    pending.append(tp)
    return sorted(keys)


SCHEMA_KEYS = _schema_keys()
PROBERS = ["http", "tcp", "dns", "icmp", "grpc", "push", "flow", "nope", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            *[
                "30s",
                "1m30s",
                "500ms",
                "0",
                "0s",
                "-1s",
                "10y",
                "200-299",
                "404",
                "1MB",
                "10KiB",
                "ip4",
                "ip6",
            ],
            *["127.0.0.0/8", "::1/128", "*.example", "${HOME}", "${OE_FUZZ_UNSET}", "TLS12", "A", "NOERROR"],
            *["[[:alpha:]]+", "(?<x>a)", "\\Q.\\E", "(", "a{99999999999}", "http_2xx", "GET", ""],
            *PROBERS,
        ]
    ),
    st.text(max_size=20),
)
keys = st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=12))


def _nest(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=5),
    )


values = st.recursive(scalars, _nest, max_leaves=10)


@st.composite
def service_entries(draw: st.DrawFn) -> dict[str, Any]:
    """A service that looks almost right, so the loader goes deep into it."""
    entry: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(SCHEMA_KEYS), max_size=6, unique=True)):
        entry[key] = draw(values)
    entry.setdefault("name", draw(st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True)))
    entry.setdefault("target", draw(st.sampled_from(["127.0.0.1:1", "http://127.0.0.1:1/", "", "::1"])))
    if draw(st.booleans()):
        prober = draw(st.sampled_from(PROBERS))
        entry["prober"] = prober
        if prober and draw(st.booleans()):
            entry[prober] = draw(st.dictionaries(st.sampled_from(SCHEMA_KEYS), values, max_size=4))
    else:
        entry["module"] = draw(st.sampled_from(["m", "http_2xx", "missing"]))
    return entry


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A config document built from the real sections, filled with plausible and odd values."""
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["global"] = draw(st.dictionaries(st.sampled_from(SCHEMA_KEYS), values, max_size=5))
    if draw(st.booleans()):
        doc["probe_allowlist"] = draw(st.lists(scalars, max_size=4))
    if draw(st.booleans()):
        module = {"prober": draw(st.sampled_from(PROBERS))}
        module.update(draw(st.dictionaries(st.sampled_from(SCHEMA_KEYS), values, max_size=4)))
        doc["modules"] = {"m": module}
    doc["services"] = draw(st.lists(service_entries(), max_size=3))
    doc.update(draw(st.dictionaries(keys, values, max_size=2)))
    return doc


def check_loads_or_explains(text: str) -> None:
    """The loader's contract: a Config, or a ConfigError whose every issue is located."""
    try:
        loaded = parse_config(text, "fuzz.yml")
    except ConfigError as err:
        assert err.issues, "a ConfigError must list at least one issue"
        for issue in err.issues:
            assert isinstance(issue.path, str)
            assert issue.line is None or (isinstance(issue.line, int) and issue.line >= 1)
            assert issue.path or issue.line is not None, f"issue names neither path nor line: {issue}"
            assert issue.message
        assert str(err)
    except Exception as err:  # the point of the test: nothing else may escape
        pytest.fail(f"{type(err).__name__} escaped the loader: {err!s:.300}\n--- input ---\n{text[:2000]}")
    else:
        assert isinstance(loaded, Config)


@settings(EXAMPLES, max_examples=80)
@given(documents())
def test_structured_config_loads_or_raises_config_error(doc: dict[str, Any]) -> None:
    """Any document built from the schema's keys loads or fails with located ConfigIssues."""
    check_loads_or_explains(yaml.safe_dump(doc, sort_keys=False))


@EXAMPLES
@given(values)
def test_any_yaml_value_loads_or_raises_config_error(value: Any) -> None:
    """Any YAML value at the top loads or fails with located ConfigIssues."""
    check_loads_or_explains(yaml.safe_dump(value))


VALID = """\
global: {interval: 30s, timeout: 10s, location: here}
probe_allowlist: [127.0.0.0/8]
modules:
  http_2xx: {prober: http, http: {valid_status_codes: [200-299], basic_auth: {username: u, password: p}}}
services:
  - name: a
    target: http://127.0.0.1:1/
    module: http_2xx
    labels: {team: x}
    objectives: {availability: 0.99, latency: 100ms}
  - {name: b, prober: tcp, target: "127.0.0.1:2", tcp: {query_response: [{expect: "^ok"}]}}
"""


@EXAMPLES
@given(st.data())
def test_mutated_valid_config_loads_or_raises_config_error(data: st.DataObject) -> None:
    """A valid file with characters inserted, deleted or replaced loads or fails cleanly."""
    text = VALID
    alphabet = st.sampled_from(list(":-[]{}&*!|>'\"#%@`,?\n\t ") + list(string.ascii_letters[:6]) + ["<<"])
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = data.draw(alphabet)
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + piece + text[at + 1 :]
    check_loads_or_explains(text)


@EXAMPLES
@given(st.text(max_size=200))
def test_random_text_loads_or_raises_config_error(text: str) -> None:
    """Arbitrary text (control characters, tabs, lone surrogates excluded by YAML) fails cleanly."""
    check_loads_or_explains(text)


ANCHORED = [
    "global: &a {<<: *a}\n",
    "global: &a {interval: 1m, <<: [*a, *a]}\n",
    "probe_allowlist: &a [*a]\n",
    "services: &s [*s]\n",
    "global: {<<: {[a]: 1}}\n",
    "global: {<<: [1, [2], ~]}\n",
    "services: [{name: a, target: b, prober: tcp, labels: &l {a: *l}}]\n",
]


def merge_bomb(depth: int, width: int) -> str:
    """Merge keys that expand to width**depth keys if each alias is flattened anew."""
    lines = ["x0: &a0 {interval: 1m}"]
    for level in range(1, depth + 1):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"x{level}: &a{level} {{<<: [{refs}]}}")
    lines.append(f"global: {{<<: [*a{depth}]}}")
    return "\n".join(lines) + "\n"


def merge_chain(length: int) -> str:
    """A long chain of mappings, each merging the one before it."""
    lines = ["x0: &a0 {interval: 1m}"]
    lines += [f"x{i}: &a{i} {{<<: *a{i - 1}}}" for i in range(1, length)]
    lines.append(f"global: {{<<: *a{length - 1}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text",
    [
        *ANCHORED,
        merge_bomb(depth=9, width=10),
        merge_chain(3000),
        "global: {max_concurrency: 1" + "0" * 5000 + "}\n",
        "global: {interval: 1" + "0" * 400 + "s}\n",
        "global: {interval: 2001-13-45}\n",
        "global: {interval: !!binary '@@@'}\n",
        "global: {latency_buckets: [1, .inf]}\n",
        "global: {latency_buckets: [.nan]}\n",
        "modules: {m: {prober: icmp, icmp: {ttl: 1" + "0" * 5000 + "}}}\n",
        "modules: {m: {prober: http, http: {fail_if_body_matches_regexp: ['"
        + "(" * 3000
        + ")" * 3000
        + "']}}}\n",
        "modules: {m: {prober: http, http: {fail_if_body_matches_regexp: ['a{99999999999999999999}']}}}\n",
        "global: " + "[" * 3000 + "]" * 3000 + "\n",
        "global: {location: " + "{a: " * 3000 + "1" + "}" * 3000 + "}\n",
        "a: \x00\n",
        "\ufeffglobal: {}\n",
        "--- !!map\n? !!python/name:os.system\n: 1\n",
    ],
    ids=lambda text: text[:40],
)
def test_hostile_yaml_is_a_config_error(text: str) -> None:
    """Aliases, merge cycles and bombs, huge numbers, deep nesting: a ConfigError or a Config, fast."""
    check_loads_or_explains(text)


def test_infinite_latency_bucket_is_refused() -> None:
    """A +Inf or NaN bucket would duplicate the implicit +Inf series and break every scrape."""
    for bucket in (".inf", ".nan"):
        with pytest.raises(ConfigError) as info:
            parse_config(f"global: {{latency_buckets: [0.1, {bucket}]}}\n")
        assert [i.path for i in info.value.issues] == ["global.latency_buckets"]


# --- the web app -------------------------------------------------------------------------------

PUSH_TOKEN = "fuzz-push-token"


@pytest.fixture(scope="module")
def fuzz_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, Path]]:
    """A config whose probes never leave loopback, with a port that refuses connections."""
    import socket

    tmp = tmp_path_factory.mktemp("fuzz")
    token = tmp / "token"
    token.write_text(PUSH_TOKEN)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound but not listening: connecting is refused
    port = closed.getsockname()[1]
    path = tmp / "config.yml"
    # The allowlist holds only a glob no generated name matches, so no target is ever resolved.
    text = f"""
global: {{interval: 1m, timeout: 2s}}
probe_allowlist: [allowed-for-nothing.example]
modules:
  http_2xx: {{prober: http, timeout: 1s}}
  tcp_connect: {{prober: tcp}}
services:
  - {{name: refused, prober: tcp, target: "127.0.0.1:{port}"}}
  - {{name: beat, prober: push, push: {{token_file: {token}, max_silence: 1m}}}}
"""
    path.write_text(text)
    try:
        yield parse_config(text, str(path)), path
    finally:
        closed.close()


METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW", "get", "G ET"]
PATHS = ["/", "/metrics", "/probe", "/config", "/-/healthy", "/-/ready", "/-/reload", "/push/beat"]
PATHS += ["/push/nope", "/push/", "//metrics", "/metrics/", "/%2e%2e/config", "/probe/../config", "*"]
PATHS += ["/logs"]
QUERY_PIECES = [
    "target=",
    "target=127.0.0.1",
    "target=http://[::1",
    "target=http://[zz]/",
    "target=%zz",
    "target=%ff%fe",
    "target=%",
    "target=a%00b",
    "target=http://u:p@127.0.0.1:1/",
    "target=2130706433",
    "target=[::ffff:127.0.0.1]:1",
    "module=",
    "module=http_2xx",
    "module=tcp_connect",
    "module=%00",
    "service=refused",
    "service=beat",
    "service=",
    "service=%ff",
    "debug=true",
    "debug=%",
    "token=" + PUSH_TOKEN,
    "token=x",
    "status=up",
    "status=maybe",
    "duration=nan",
    "duration=-1",
    "duration=1e400",
    "message=" + "m" * 300,
    "&&&",
    "=",
    "==",
    "a[]=1",
    ";",
    "#frag",
]
TIMEOUT_VALUES = ["nan", "NaN", "inf", "-inf", "-1", "0", "-0", "1e309", "9" * 3000, "1e-320", "0x10"]
TIMEOUT_VALUES += ["", " ", "1,5", "1_0", "\u0661", "5", "0.5", "0.5000001", "1e5"]
HEADERS = [
    ("X-Prometheus-Scrape-Timeout-Seconds", st.sampled_from(TIMEOUT_VALUES)),
    ("Authorization", st.sampled_from(["Bearer " + PUSH_TOKEN, "Bearer", "Basic !!!", "x" * 4000])),
    ("Content-Type", st.sampled_from(["application/json", "multipart/form-data", "text/plain", ";;"])),
    ("Accept-Encoding", st.sampled_from(["gzip", "*", "x" * 100])),
    ("X-Odd", st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=50)),
    ("Expect", st.sampled_from(["100-continue", "nothing"])),
    ("Transfer-Encoding", st.sampled_from(["gzip", "identity"])),
]


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """One HTTP/1.1 request, written byte by byte, with odd methods, queries, headers and bodies."""
    method = draw(st.sampled_from(METHODS))
    path = draw(st.sampled_from(PATHS))
    pieces = draw(st.lists(st.sampled_from(QUERY_PIECES), max_size=5))
    if draw(st.booleans()):
        pieces.append("target=" + "a" * draw(st.sampled_from([100, 4097, 7000])))
    query = "&".join(pieces)
    target = path + ("?" + query if query else "")
    headers = [("Host", "127.0.0.1"), ("Connection", "close")]
    for name, strategy in draw(st.lists(st.sampled_from(HEADERS), max_size=3, unique_by=lambda h: h[0])):
        headers.append((name, draw(strategy)))
    body = draw(
        st.sampled_from(
            [b"", b"{}", b"[1]", b'{"status": "down", "token": "x"}', b"\xff\xfe", b"a=1&b", b"{"]
        )
    )
    if body or draw(st.booleans()):
        headers.append(("Content-Length", str(len(body))))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("utf-8", "surrogateescape") + body


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes and return the status line; the server must answer and close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(20):
            return await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(line: bytes) -> int:
    parts = line.split(b" ", 2)
    assert len(parts) >= 2 and parts[0].startswith(b"HTTP/1."), f"no status line: {line!r}"
    return int(parts[1])


def test_malformed_requests_never_fail_the_server(fuzz_config: tuple[Config, Path]) -> None:
    """Odd methods, queries, encodings, headers and bodies on every endpoint get an answer below 500."""
    config, path = fuzz_config

    async def start() -> TestClient[Any, Any]:
        app = make_app(config, config_file=str(path), schedule=False)
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        return client

    # Hypothesis drives a plain function, so the event loop is run by hand across examples.
    with asyncio.Runner() as runner:
        client = runner.run(start())
        port = client.server.port
        assert port is not None
        seen: set[int] = set()
        try:

            @EXAMPLES
            @given(raw_requests())
            def check(request: bytes) -> None:
                status = status_of(runner.run(exchange(port, request)))
                seen.add(status)
                # /-/ready says 503 by design here: the app was built without its scheduler.
                path = request.split(b" ", 2)[1].split(b"?", 1)[0]
                not_ready = status == 503 and path == b"/-/ready"
                assert status < 500 or not_ready, request[:300]

            check()
        finally:
            runner.run(client.close())
    assert any(400 <= s < 500 for s in seen)


@pytest.mark.parametrize(
    "query",
    [
        "target=http://[::1",
        "target=http://[zz]/",
        "target=http://[::1]:99999999/",
        "target=%zz",
        "target=%ff%fe",
        "target=a%00b",
        "target=" + "a" * 5000,
        "module=nope&target=127.0.0.1",
        "target=1&target=2&target=3",
    ],
)
async def test_bad_probe_queries_are_client_errors(
    fuzz_config: tuple[Config, Path], query: str, aiohttp_server: AiohttpServer
) -> None:
    """Each odd /probe query is refused with a 4xx that says why."""
    config, _ = fuzz_config
    server = await aiohttp_server(make_app(config, schedule=False))
    assert server.port is not None
    request = f"GET /probe?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    status = status_of(await exchange(server.port, request))
    assert 400 <= status < 500


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nan", 400),
        ("-inf", 400),
        ("-1", 400),
        ("0", 400),
        ("x", 400),
        ("9" * 3000, 200),
        ("inf", 200),
        ("1e-320", 200),
    ],
)
async def test_scrape_timeout_header_values(
    fuzz_config: tuple[Config, Path], value: str, expected: int, aiohttp_client: AiohttpClient
) -> None:
    """NaN, negative and zero scrape timeouts are 400; huge, infinite and tiny ones still probe."""
    config, _ = fuzz_config
    client = await aiohttp_client(make_app(config, schedule=False))
    response = await client.get(
        "/probe", params={"service": "refused"}, headers={"X-Prometheus-Scrape-Timeout-Seconds": value}
    )
    assert response.status == expected, await response.text()
