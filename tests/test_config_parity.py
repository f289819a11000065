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


# One row per file of blackbox 0.28's config/testdata (and master's websocket one): our own
# config making the same point, its verdict, and where the verdict comes from ("binary": the
# Debian 0.23 binary checks it too; otherwise the 0.28 source's verdict, recorded).
TESTDATA: list[tuple[str, str, bool, str]] = [
    (
        "blackbox-good.yml",
        (
            "modules:\n"
            "  web: {prober: http, timeout: 5s, http: {method: POST, "
            "basic_auth: {username: u, password: p}, body_size_limit: 1MB}}\n"
            '  tls_banner: {prober: tcp, tcp: {query_response: [{expect: "^+OK"}], tls: true, '
            "tls_config: {insecure_skip_verify: false}}}\n"
            '  mail: {prober: tcp, tcp: {query_response: [{expect: "^220 "}, {send: "EHLO x\\r"}, '
            '{expect: "^250-STARTTLS"}, '
            '{send: "STARTTLS\\r"}, {expect: "^220"}, {starttls: true}, {send: "QUIT\\r"}]}}\n'
            '  chat: {prober: tcp, tcp: {query_response: [{send: "NICK p"}, '
            '{expect: "PING :([^ ]+)", send: "PONG ${1}"}]}}\n'
            "  ping: {prober: icmp, icmp: {preferred_ip_protocol: ip4}}\n"
            "  resolver: {prober: dns, dns: {query_name: example.com, preferred_ip_protocol: ip4, "
            "ip_protocol_fallback: false, validate_answer_rrs: {fail_if_matches_regexp: [x]}}}\n"
            "  origin: {prober: http, http: {headers: {Origin: example.com}, "
            "fail_if_header_not_matches: [{header: Access-Control-Allow-Origin, "
            "regexp: '(\\*|example\\.com)', allow_missing: false}]}}\n"
        ),
        True,
        "binary",
    ),
    (
        "blackbox-bad.yml",
        "modules: {d: {prober: dns, dns: {query_name: example.com, extra_option: 1}}}",
        False,
        "binary",
    ),
    (
        "blackbox-bad2.yml",
        (
            "modules: {p: {prober: http, http: {bearer_token: a, bearer_token_file: /f, "
            "basic_auth: {username: u, password: p}}}}"
        ),
        False,
        "binary",
    ),
    (
        "invalid-dns-class.yml",
        "modules: {d: {prober: dns, dns: {query_name: example.com, query_class: X}}}",
        False,
        "binary",
    ),
    (
        "invalid-dns-module.yml",
        "modules: {d: {prober: dns, dns: {validate_answer_rrs: {fail_if_matches_regexp: [x]}}}}",
        False,
        "binary",
    ),
    (
        "invalid-dns-type.yml",
        "modules: {d: {prober: dns, dns: {query_name: example.com, query_type: X}}}",
        False,
        "binary",
    ),
    (
        "invalid-http-body-config.yml",
        "modules: {h: {prober: http, http: {body: x, body_file: /b.txt}}}",
        False,
        "0.28: body and body_file together (0.23 has no body_file)",
    ),
    (
        "invalid-http-body-match-regexp.yml",
        "modules: {h: {prober: http, http: {fail_if_body_matches_regexp: ['a[']}}}",
        False,
        "binary",
    ),
    (
        "invalid-http-body-not-match-regexp.yml",
        "modules: {h: {prober: http, http: {fail_if_body_not_matches_regexp: ['a[']}}}",
        False,
        "binary",
    ),
    (
        "invalid-http-compression-mismatch.yml",
        "modules: {h: {prober: http, http: {compression: gzip, headers: {Accept-Encoding: br}}}}",
        False,
        "binary",
    ),
    (
        "invalid-http-compression-mismatch-special-case.yml",
        "modules: {h: {prober: http, http: {compression: gzip, headers: {aCCept-encodING: br}}}}",
        False,
        "binary",
    ),
    (
        "invalid-http-request-compression-reject-all-encodings.yml",
        "modules: {h: {prober: http, http: {compression: br, headers: {Accept-Encoding: '*;q=0'}}}}",
        False,
        "binary",
    ),
    (
        "invalid-http-header-match-regexp.yml",
        "modules: {h: {prober: http, http: {fail_if_header_matches: [{header: X-A, regexp: 'a['}]}}}",
        False,
        "binary",
    ),
    (
        "invalid-http-header-match.yml",
        "modules: {h: {prober: http, http: {fail_if_header_matches: [{header: X-A}]}}}",
        False,
        "binary",
    ),
    (
        "invalid-http-http3-http2.yml",
        (
            "modules: {h: {prober: http, http: {enable_http3: true, enable_http2: true, "
            "valid_http_versions: [HTTP/1.1, HTTP/3.0]}}}"
        ),
        False,
        "0.28: HTTP/3 with HTTP/2 enabled (0.23 has no enable_http3)",
    ),
    (
        "invalid-http-http3-http2-enabled.yml",
        (
            "modules: {h: {prober: http, http: {enable_http3: true, enable_http2: true, "
            "valid_http_versions: [HTTP/3.0]}}}"
        ),
        False,
        "0.28: HTTP/3 only, HTTP/2 enabled",
    ),
    (
        "invalid-http-http3-http2-version.yml",
        (
            "modules: {h: {prober: http, http: {enable_http3: true, enable_http2: false, "
            "valid_http_versions: [HTTP/2.0, HTTP/3.0]}}}"
        ),
        False,
        "0.28: HTTP/3 with an HTTP/2 version but HTTP/2 off",
    ),
    (
        "invalid-no-versions-http3-enabled.yml",
        "modules: {h: {prober: http, http: {enable_http3: true}}}",
        False,
        "0.28: HTTP/3 without valid_http_versions",
    ),
    (
        "invalid-icmp-ttl.yml",
        "modules: {i: {prober: icmp, icmp: {ttl: -5}}}",
        False,
        "binary",
    ),
    (
        "invalid-icmp-ttl-overflow.yml",
        "modules: {i: {prober: icmp, icmp: {ttl: 300}}}",
        False,
        "binary",
    ),
    (
        "invalid-prober.yml",
        "modules: {x: {prober: smtp, timeout: 5s}}",
        False,
        "0.28 refuses an unknown prober at load; 0.23 loads it and fails each probe",
    ),
    (
        "invalid-tcp-query-response-regexp.yml",
        "modules: {t: {prober: tcp, tcp: {query_response: [{expect: 'a['}]}}}",
        False,
        "binary",
    ),
    (
        "invalid-unix-query-response-regexp.yml",
        "modules: {u: {prober: unix, unix: {query_response: [{expect: 'a['}]}}}",
        False,
        "0.28: the unix prober (not in 0.23; here the bad regex is the one error, see test_unix)",
    ),
    (
        "invalid-websocket-query-response-regexp.yml",
        "modules: {w: {prober: websocket, websocket: {query_response: [{expect: 'a['}]}}}",
        False,
        "after 0.28: blackbox's websocket prober (ours has its own options)",
    ),
]
BLACKBOX_TESTDATA_FILES = frozenset(
    {
        "blackbox-good.yml",
        "blackbox-bad.yml",
        "blackbox-bad2.yml",
        "invalid-dns-class.yml",
        "invalid-dns-module.yml",
        "invalid-dns-type.yml",
        "invalid-http-body-config.yml",
        "invalid-http-body-match-regexp.yml",
        "invalid-http-body-not-match-regexp.yml",
        "invalid-http-compression-mismatch.yml",
        "invalid-http-compression-mismatch-special-case.yml",
        "invalid-http-request-compression-reject-all-encodings.yml",
        "invalid-http-header-match-regexp.yml",
        "invalid-http-header-match.yml",
        "invalid-http-http3-http2.yml",
        "invalid-http-http3-http2-enabled.yml",
        "invalid-http-http3-http2-version.yml",
        "invalid-no-versions-http3-enabled.yml",
        "invalid-icmp-ttl.yml",
        "invalid-icmp-ttl-overflow.yml",
        "invalid-prober.yml",
        "invalid-tcp-query-response-regexp.yml",
        "invalid-unix-query-response-regexp.yml",
        "invalid-websocket-query-response-regexp.yml",
    }
)


def test_every_blackbox_testdata_file_has_a_row() -> None:
    """The table covers each file of blackbox's config/testdata once."""
    names = [row[0] for row in TESTDATA]
    assert len(names) == len(set(names)) and set(names) == BLACKBOX_TESTDATA_FILES


@pytest.mark.parametrize(("name", "text", "loads", "source"), TESTDATA, ids=[row[0] for row in TESTDATA])
def test_blackbox_testdata_verdicts(
    name: str, text: str, loads: bool, source: str, blackbox_binary: str, tmp_path: Path
) -> None:
    """Each testdata point: our loader's verdict is blackbox's, checked by the binary where it can."""
    path = tmp_path / name
    path.write_text(text + "\n", encoding="utf-8")
    theirs, ours, why = load_verdicts(blackbox_binary, path)
    assert ours == loads, why
    if source == "binary":
        assert theirs == loads, why


def test_http3_is_refused_by_name() -> None:
    """``enable_http3: false`` loads (blackbox 0.28 writes it); true is refused naming the option."""
    parse_config("modules: {m: {prober: http, http: {enable_http3: false}}}")
    with pytest.raises(ConfigError) as caught:
        parse_config("modules: {m: {prober: http, http: {enable_http3: true}}}")
    assert str(caught.value) == (
        "modules.m.http.enable_http3 (line 1): HTTP/3 is not supported: probes speak HTTP/1.1 over TCP; "
        "remove enable_http3"
    )
