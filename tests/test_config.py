"""Tests for the config loader: valid files, blackbox.yml, and one invalid file per error kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import dump_config, load_config, parse_config
from exporter.errors import ConfigError
from exporter.probes import PROBERS
from exporter.types import Duration

DATA = Path(__file__).parent / "testdata"
BLACKBOX_YML = Path("/etc/prometheus/blackbox.yml")

BODY_REGEX = "modules.body_check.http.fail_if_body_not_matches_regexp[0]"

# The registry's kinds, in its order: the message lists whatever is registered.
KNOWN_KINDS = ", ".join(PROBERS)

INVALID = {
    "invalid-unknown-key.yml": ["services[0].tiemout (line 7): unknown key (did you mean 'timeout'?)"],
    "invalid-wrong-type.yml": ["global.max_concurrency (line 2): must be an integer, got string 'lots'"],
    "invalid-duration.yml": [
        "global.interval (line 2): must be a duration such as 30s or 1m30s, got '30 seconds'"
    ],
    "invalid-timeout-interval.yml": ["services[0].timeout (line 8): must be less than interval 10s, got 30s"],
    "invalid-timeout-inherited.yml": [
        "services[0].interval (line 8): must be greater than timeout 10s (from global.timeout), got 5s"
    ],
    "invalid-duplicate-service.yml": [
        "services[1].name (line 5): duplicate service name 'api' (first on line 2)"
    ],
    "invalid-unknown-module.yml": [
        "services[0].module (line 7): unknown module 'http_3xx' (modules: http_2xx)"
    ],
    "invalid-regex-any-byte.yml": [
        f"{BODY_REGEX} (line 7): invalid regular expression 'a\\\\Cb': invalid escape sequence: `\\C`",
    ],
    "invalid-regex-atomic.yml": [
        f"{BODY_REGEX} (line 7): invalid regular expression "
        "'(?>ab|a)c': invalid perl operator: `(?>` (RE2 has no atomic groups)",
    ],
    "invalid-regex-backreference.yml": [
        f"{BODY_REGEX} (line 7): invalid regular expression "
        "'(a)\\\\1': invalid escape sequence: `\\1` (RE2 has no backreferences)",
    ],
    "invalid-regex-end-anchor.yml": [
        f"{BODY_REGEX} (line 7): invalid regular expression "
        "'ok\\\\Z': invalid escape sequence: `\\Z` (write \\z for the end of the text)",
    ],
    "invalid-regex-lookahead.yml": [
        f"{BODY_REGEX} (line 7): invalid regular expression "
        "'ok(?=!)': invalid perl operator: `(?=` (RE2 has no lookaround assertions)",
    ],
    "invalid-regex-lookbehind.yml": [
        f"{BODY_REGEX} (line 7): invalid regular expression "
        "'(?<!not )ok': invalid perl operator: `(?<!` (RE2 has no lookaround assertions)",
    ],
    "invalid-regex-possessive.yml": [
        f"{BODY_REGEX} (line 7): invalid regular expression "
        "'a++b': bad repetition operator: `++` (RE2 has no possessive quantifiers)",
    ],
    "invalid-regex-repeat.yml": [
        f"{BODY_REGEX} (line 7): invalid regular expression "
        "'a{1001}': invalid repetition size: `{1001}` (RE2 repeats at most 1000 times)",
    ],
    "invalid-regex.yml": [
        f"{BODY_REGEX} (line 6): invalid regular expression 'status: (ok': missing ): `status: (ok`",
    ],
    "invalid-label-name.yml": [
        "services[0].labels.team-name (line 6): invalid label name 'team-name': "
        "must match [a-zA-Z_][a-zA-Z0-9_]*"
    ],
    "invalid-reserved-label.yml": [
        "services[0].labels.location (line 6): label name 'location' is reserved by the exporter"
    ],
    "invalid-service-name.yml": ["services[0].name (line 2): must match [a-zA-Z0-9_.-]+, got 'api login'"],
    "invalid-unknown-prober.yml": [
        f"modules.ftp_banner.prober (line 3): unknown prober 'ftp'; expected one of {KNOWN_KINDS}"
    ],
    "invalid-missing-target.yml": ["services[0].target (line 2): is required"],
    "invalid-yaml-syntax.yml": [
        "<document> (line 4): invalid YAML: while parsing a flow sequence did not find expected ',' or ']'"
    ],
    "invalid-status-code.yml": [
        "modules.http_2xx.http.valid_status_codes[1] (line 5): "
        "must be a status code or a range within 100-599, got 700"
    ],
    "invalid-availability.yml": [
        "services[0].objectives.availability (line 6): must be between 0 and 1 (exclusive), got 99.9"
    ],
    "invalid-allowlist.yml": [
        "probe_allowlist[0] (line 2): invalid network '10.0.0.0/33': "
        "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"
    ],
    "invalid-module-and-prober.yml": ["services[0].prober (line 8): set either module or prober, not both"],
    "invalid-dns-query-name.yml": ["modules.dns_soa.dns (line 5): query_name is required for the dns prober"],
    "invalid-env-secret.yml": [
        "modules.api_auth.http.bearer_token (line 5): "
        "environment variable OUTAGE_EXPORTER_TEST_UNSET_TOKEN is not set"
    ],
    "invalid-ip-protocol.yml": [
        "modules.tcp_v5.tcp.preferred_ip_protocol (line 5): must be one of 'ip4', 'ip6', 'ip', got 'ip5'"
    ],
    "invalid-inline-mismatch.yml": ["services[0].http (line 6): http settings do not apply to prober 'tcp'"],
    "invalid-push-settings.yml": [
        "services[0].push.max_silence (line 5): "
        "is required: how long without a push before the service fails",
        "services[0].push.token_file (line 5): is required: pushes must carry the token kept in this file",
    ],
    "invalid-not-a-list.yml": ["services (line 2): must be a list, got a mapping"],
    "invalid-flow-step-name.yml": [
        "services[0].flow.steps[0].name (line 7): must match [a-zA-Z0-9_-]+, got 'log in'"
    ],
    "invalid-flow-duplicate-step.yml": [
        "services[0].flow.steps (line 7): duplicate step name 'login' (steps[0] and steps[1])"
    ],
    "invalid-flow-undefined-variable.yml": [
        "services[0].flow.steps (line 7): steps[1] (feed) uses {{tokn}} in its header Authorization, "
        "but no earlier step extracts 'tokn'"
    ],
    "invalid-flow-json-path.yml": [
        "services[0].flow.steps[0].expect_json[0].path (line 10): invalid JSON path '$.items[first].id': "
        'expected .key, [index] or ["key"] at position 7'
    ],
    "invalid-flow-extract.yml": [
        "services[0].flow.steps[0].extract.token.header (line 12): "
        "set one of json, regexp, header and cookie, not json and header",
        "services[0].flow.steps[0].extract.csrf (line 13): needs one of json, regexp, header and cookie",
    ],
    "invalid-flow-condition.yml": [
        "services[0].flow.steps[0].expect_json[0].path (line 10): "
        "needs a test: exists, equals, matches, gt, ge, lt or le",
        "services[0].flow.steps[0].expect_json[1].exists (line 12): "
        "exists: false cannot be combined with equals",
    ],
    "invalid-flow-no-steps.yml": [
        "modules.journey.flow.steps (line 3): is required: a journey needs at least one step"
    ],
    "invalid-flow-url.yml": [
        "services[0].flow.steps[0].url (line 8): must be an http or https URL or a path, got scheme 'ftp'"
    ],
    "invalid-statuspage-max-components.yml": [
        "services[0].statuspage.max_components (line 7): must be between 0 and 1000, got 5000"
    ],
    "invalid-websocket-header.yml": [
        "modules.chat.websocket.headers.Sec-WebSocket-Protocol (line 6): "
        "header Sec-WebSocket-Protocol is set by the WebSocket handshake (use subprotocols)"
    ],
    "invalid-websocket-message.yml": [
        "modules.chat.websocket.messages[1].expect (line 7): set expect, send or both"
    ],
    "invalid-grpc-metadata.yml": [
        "modules.grpc_health.grpc.metadata.grpc-timeout (line 6): "
        "metadata key 'grpc-timeout' is reserved by gRPC",
        "modules.grpc_health.grpc.metadata.x team (line 7): "
        "invalid metadata key 'x team': use letters, digits, '_', '.' and '-'",
    ],
    "invalid-maintenance-end-before-start.yml": [
        "maintenance[0].end (line 6): must be after start 2026-12-01T22:00:00Z, got 2026-12-01T21:00:00Z"
    ],
    "invalid-maintenance-schedule.yml": [
        "maintenance[0].schedule (line 5): hour field '25': 25 is outside 0-23"
    ],
    "invalid-maintenance-both-kinds.yml": [
        "maintenance[0].schedule (line 7): set either start and end, or schedule and duration, not both"
    ],
    "invalid-maintenance-unknown-service.yml": [
        "maintenance[0].services[0] (line 4): no service 'chekout' (did you mean 'checkout'?)"
    ],
    "invalid-maintenance-no-offset.yml": [
        "maintenance[0].start (line 5): must say its UTC offset (Z or +02:00), "
        "got 2026-12-01 22:00:00 without one"
    ],
    "invalid-maintenance-missing.yml": [
        "maintenance[0].duration (line 4): is required with schedule: how long each window lasts",
        "maintenance[0].services (line 4): a window needs services, groups or all: true",
        "maintenance[0].reason (line 5): must not be empty: it is shown on the status page",
    ],
    "invalid-status-page.yml": [
        "status_page.prometheus_url (line 4): must be an http or https URL, got 'prometheus:9090'",
        "status_page.slots (line 5): must be between 10 and 500, got 5000",
    ],
    "invalid-status-page-public.yml": [
        "status_page.public.labels[1] (line 6): invalid label name 'team-name': "
        "must match [a-zA-Z_][a-zA-Z0-9_]*"
    ],
    "invalid-service-all-errors.yml": [
        f"services[0].prober (line 4): unknown prober 'nosuch'; expected one of {KNOWN_KINDS}",
        "services[0].bogus_key (line 6): unknown key",
        "services[0].timeout (line 8): must be less than interval 5s, got 10s",
    ],
    "invalid-many.yml": [
        "services[0].timeout (line 8): must be less than interval 10s, got 30s",
        "services[1].name (line 9): duplicate service name 'api' (first on line 5)",
        "services[1].module (line 11): unknown module 'missing' (modules: none defined)",
        "services[2].tcp.query_response[0].expect (line 17): invalid regular expression "
        "'(unclosed': missing ): `(unclosed`",
    ],
}


def test_every_invalid_fixture_is_listed() -> None:
    """Each invalid-*.yml file in testdata has its expected messages here, and vice versa."""
    on_disk = {p.name for p in DATA.glob("invalid-*.yml")}
    assert on_disk == set(INVALID)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_config_reports_exact_messages(name: str) -> None:
    """An invalid file fails with exactly the expected located messages, all at once."""
    with pytest.raises(ConfigError) as info:
        load_config(DATA / name)
    assert [str(issue) for issue in info.value.issues] == INVALID[name]


def test_valid_config_loads_into_frozen_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full config resolves modules, intervals, timeouts, labels and objectives."""
    monkeypatch.setenv("OUTAGE_EXPORTER_TEST_PASSWORD", "hunter2")
    config = load_config(DATA / "valid-full.yml")
    login, api, db = config.services
    assert (login.name, login.group, login.module_name, login.module.prober) == (
        "login",
        "meta",
        "http_2xx",
        "http",
    )
    assert (login.interval, login.timeout) == (15.0, 5.0)
    assert dict(login.labels) == {"team": "identity"}
    assert login.objectives.availability == 0.999
    assert login.objectives.latency == 0.8
    assert 0.8 in login.latency_buckets
    assert api.module_name == ""
    assert api.module.sections["http"].basic_auth is not None
    assert api.module.sections["http"].basic_auth.password is not None
    assert api.module.sections["http"].basic_auth.password.reveal() == "hunter2"
    assert (api.interval, api.timeout) == (30.0, 10.0)
    assert db.group == "default"
    assert config.global_.location == "eu-west"
    with pytest.raises(AttributeError):
        login.name = "other"  # type: ignore[misc]


def test_dump_config_redacts_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The /config rendering shows settings but never a secret's value."""
    monkeypatch.setenv("OUTAGE_EXPORTER_TEST_PASSWORD", "hunter2-secret")
    text = dump_config(load_config(DATA / "valid-full.yml"))
    assert "hunter2-secret" not in text
    assert "password: <secret>" in text
    assert "name: login" in text


def test_blackbox_yml_loads_unchanged() -> None:
    """Debian's blackbox.yml loads as-is and keeps its meaning."""
    config = load_config(BLACKBOX_YML)
    assert set(config.modules) >= {"http_2xx", "http_post_2xx", "tcp_connect", "icmp", "irc_banner"}
    assert config.modules["http_post_2xx"].sections["http"].method == "POST"
    assert config.modules["icmp_ttl5"].timeout == Duration(5)
    assert config.modules["icmp_ttl5"].sections["icmp"].ttl == 5
    irc = config.modules["irc_banner"].sections["tcp"].query_response
    assert irc[2].send == "PONG ${1}"
    assert irc[2].expect is not None
    match = irc[2].expect.search("PING :abc123")
    assert match is not None and match.group(1) == "abc123"
    pop3 = config.modules["pop3s_banner"].sections["tcp"]
    assert pop3.tls and pop3.query_response[0].expect is not None
    # RE2 reads "^+" as a repeated start anchor, so this expects "OK" at the start, as in blackbox.
    assert pop3.query_response[0].expect.search("OK ready")
    assert not pop3.query_response[0].expect.search("+OK ready")


def test_durations_follow_prometheus_syntax() -> None:
    """Durations accept Prometheus' unit syntax and reject anything else."""
    assert Duration.from_yaml("1h30m") == 5400
    assert Duration.from_yaml("250ms") == 0.25
    for bad in ("1.5s", "10", "s", "-1s", "1m 30s"):
        with pytest.raises(ValueError):
            Duration.from_yaml(bad)


def test_empty_file_is_a_valid_config() -> None:
    """An empty file means defaults and no services."""
    config = parse_config("")
    assert config.services == ()
    assert config.global_.interval == 30


def test_grpc_module_and_service_load() -> None:
    """blackbox's grpc modules load, and a service can use one."""
    text = "modules: {g: {prober: grpc}}\nservices: [{name: s, target: '127.0.0.1:1', module: g}]\n"
    (service,) = parse_config(text).services
    assert service.module.prober == "grpc"


def test_yaml_anchors_and_merge_keys_are_read() -> None:
    """Anchors and merge keys, common in large configs, resolve before validation."""
    text = """
base: &base {prober: http, target: 'http://127.0.0.1:1/'}
services:
  - <<: *base
    name: a
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert [str(i) for i in info.value.issues] == ["base (line 2): unknown key"]
    config = parse_config(
        "services:\n  - &s {name: a, prober: http, target: 'http://127.0.0.1:1/'}\n  - <<: *s\n    name: b\n"
    )
    assert [s.name for s in config.services] == ["a", "b"]
    assert config.services[1].target == "http://127.0.0.1:1/"


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "examples").glob("*.yml")))
def test_examples_are_valid(path: Path) -> None:
    """Every example config loads."""
    config = load_config(path)
    assert config.services


def test_http2_only_module_is_refused() -> None:
    """A module that accepts only HTTP/2 would always fail, so it is an error."""
    with pytest.raises(ConfigError) as info:
        parse_config("modules: {h2: {prober: http, http: {valid_http_versions: [HTTP/2.0]}}}\n")
    assert [str(i) for i in info.value.issues] == [
        "modules.h2.http.valid_http_versions (line 1): probes speak HTTP/1.1 and HTTP/1.0 only,"
        " so this module would always fail; add HTTP/1.1"
    ]


def test_loading_keeps_no_reference_to_the_yaml_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing holds a loaded file's YAML nodes after the load, so reloads do not grow memory."""
    import gc
    import weakref

    from exporter import config as config_module
    from exporter import yamlread

    nodes: list[weakref.ref[object]] = []

    def compose(text: str, file: str | None) -> tuple[object, list[object]]:
        root, issues = yamlread.compose(text, file)
        pending = [root]
        while pending:
            node = pending.pop()
            nodes.append(weakref.ref(node))
            if isinstance(node.value, list):
                for item in node.value:
                    pending.extend(item if isinstance(item, tuple) else (item,))
        return root, issues

    monkeypatch.setattr(config_module, "compose", compose)
    monkeypatch.setenv("OUTAGE_EXPORTER_TEST_PASSWORD", "x")
    config = load_config(DATA / "valid-full.yml")
    gc.collect()
    assert config.services
    alive = [ref() for ref in nodes if ref() is not None]
    assert len(nodes) > 50
    assert alive == []


def test_secret_values_stay_out_of_shape_errors() -> None:
    """A proxy header written as a string, or a scheme-less proxy URL: the secret is not quoted."""
    text = (
        "modules:\n  m:\n    prober: http\n    http:\n      proxy_url: 'u:s3cr3t@proxy:3128'\n"
        "  n:\n    prober: http\n    http:\n      proxy_url: http://proxy:3128\n"
        "      proxy_connect_header: {Proxy-Authorization: 'Basic s3cr3t'}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    messages = [str(issue) for issue in err.value.issues]
    assert len(messages) == 2, messages
    assert all("s3cr3t" not in message for message in messages), messages
    assert any("must be a list, got a string" in message for message in messages)


def test_dumped_token_url_hides_its_password() -> None:
    config = parse_config(
        "modules:\n  m:\n    prober: http\n    http:\n      oauth2:\n        client_id: c\n"
        "        client_secret: s\n        token_url: 'http://u:s3cr3t@auth.example/token'\n"
    )
    dumped = dump_config(config)
    assert "s3cr3t" not in dumped
    assert "auth.example/token" in dumped
