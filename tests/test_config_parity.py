"""blackbox.yml files load here exactly when they load in blackbox_exporter: each case through both.

Each case is a modules file; blackbox_exporter's ``--config.check`` gives its verdict and our
loader ours, and both must equal the verdict written in the table (taken from the Debian
0.23 binary). Where we deliberately differ the case is not here but in the README's table of
differences.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import parse_config
from exporter.errors import ConfigError
from tests.stack import load_verdicts

# (name, modules file, loads in blackbox)
CASES: list[tuple[str, str, bool]] = [
    ("fractional timeout", "modules: {m: {prober: http, timeout: 1.5s}}", True),
    ("microsecond timeout", "modules: {m: {prober: http, timeout: 100us}}", True),
    ("hours and minutes", "modules: {m: {prober: http, timeout: 1h30m}}", True),
    ("day timeout", "modules: {m: {prober: http, timeout: 1d}}", False),
    ("integer timeout", "modules: {m: {prober: http, timeout: 5}}", False),
    ("quoted status code", "modules: {m: {prober: http, http: {valid_status_codes: ['200']}}}", False),
    ("status codes", "modules: {m: {prober: http, http: {valid_status_codes: [200, 301]}}}", True),
    ("lower-case query type", "modules: {m: {prober: dns, dns: {query_name: x, query_type: aaaa}}}", False),
    ("query type", "modules: {m: {prober: dns, dns: {query_name: x, query_type: AAAA}}}", True),
    ("numbered query type", "modules: {m: {prober: dns, dns: {query_name: x, query_type: TYPE65}}}", False),
    ("newer query type", "modules: {m: {prober: dns, dns: {query_name: x, query_type: HTTPS}}}", True),
    ("lower-case class", "modules: {m: {prober: dns, dns: {query_name: x, query_class: ch}}}", False),
    ("query class", "modules: {m: {prober: dns, dns: {query_name: x, query_class: CH}}}", True),
    ("integer header value", "modules: {m: {prober: http, http: {headers: {X-Num: 5}}}}", True),
    ("boolean header value", "modules: {m: {prober: http, http: {headers: {X-On: true}}}}", True),
    ("binary send", "modules: {m: {prober: tcp, tcp: {query_response: [{send: !!binary aGVsbG8=}]}}}", True),
    ("binary expect", "modules: {m: {prober: tcp, tcp: {query_response: [{expect: !!binary Xk9L}]}}}", True),
    ("unknown key", "modules: {m: {prober: http, http: {no_such_option: 1}}}", False),
    ("lower-case rcode", "modules: {m: {prober: dns, dns: {query_name: x, valid_rcodes: [noerror]}}}", True),
]


# Checks blackbox added after 0.23 (the Debian binary), with the verdicts of its 0.28 source and
# testdata (config/testdata/invalid-http-compression-*.yml and -reject-all-encodings.yml).
RECORDED_028: list[tuple[str, str, bool]] = [
    ("grpc metadata lists", "modules: {g: {prober: grpc, grpc: {metadata: {x-team: [core, edge]}}}}", True),
    ("compression: br", "modules: {m: {prober: http, http: {compression: br}}}", True),
    (
        "accept-encoding without the compression",
        "modules: {m: {prober: http, http: {compression: gzip, headers: {Accept-Encoding: deflate}}}}",
        False,
    ),
    (
        "header name in another case",
        "modules: {m: {prober: http, http: {compression: gzip, headers: {accEpt-enCoding: deflate}}}}",
        False,
    ),
    (
        "every coding refused",
        "modules: {m: {prober: http, http: {compression: gzip, headers: {Accept-Encoding: '*;q=0.0'}}}}",
        False,
    ),
    (
        "the compression among others",
        "modules: {m: {prober: http, http: {compression: gzip, headers: {Accept-Encoding: 'br,gzip;q=.5'}}}}",
        True,
    ),
    (
        "a wildcard",
        "modules: {m: {prober: http, http: {compression: br, headers: {Accept-Encoding: 'gzip, *;q=0.1'}}}}",
        True,
    ),
]


@pytest.mark.parametrize(("name", "text", "loads"), RECORDED_028, ids=[c[0] for c in RECORDED_028])
def test_config_loads_as_recorded_from_blackbox_028(name: str, text: str, loads: bool) -> None:
    """Our loader gives blackbox 0.28's verdict on the checks the 0.23 binary predates."""
    try:
        parse_config(text)
        ours = True
    except ConfigError:
        ours = False
    assert ours == loads


@pytest.mark.parametrize(("name", "text", "loads"), CASES, ids=[c[0] for c in CASES])
def test_config_loads_as_in_blackbox(
    name: str, text: str, loads: bool, blackbox_binary: str, tmp_path: Path
) -> None:
    """blackbox_exporter --config.check and our loader both give the table's verdict."""
    path = tmp_path / "blackbox.yml"
    path.write_text(text + "\n", encoding="utf-8")
    theirs, ours, why = load_verdicts(blackbox_binary, path)
    assert (theirs, ours) == (loads, loads), why


def test_binary_send_is_the_bytes_written() -> None:
    """``send: !!binary`` sends the decoded bytes, undecodable ones included."""
    config = parse_config("modules: {m: {prober: tcp, tcp: {query_response: [{send: !!binary /wBoaQ==}]}}}")
    send = config.modules["m"].sections["tcp"].query_response[0].send
    assert send.encode("utf-8", "surrogateescape") == b"\xff\x00hi"


def test_plain_scalars_are_strings_as_written() -> None:
    """A header value written as a number or a boolean is sent as written, as Go's yaml reads it."""
    config = parse_config("modules: {m: {prober: http, http: {headers: {X-Num: 05, X-On: yes}}}}")
    headers = config.modules["m"].sections["http"].headers
    assert (headers["X-Num"], headers["X-On"]) == ("05", "yes")
