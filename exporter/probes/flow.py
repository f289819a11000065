"""The flow probe: a user journey of HTTP steps that share one cookie jar, reported step by step."""

from __future__ import annotations

import functools
import json
import operator
from types import MappingProxyType
from urllib.parse import urljoin

from exporter import offloop
from exporter.modules import (
    VARIABLE_REF_RE,
    Extract,
    FlowProbe,
    FlowStep,
    HTTPProbe,
    JSONCondition,
    json_path_parts,
)
from exporter.probes import httpclient, net
from exporter.probes.base import ProbeRequest, ProberKind
from exporter.probes.cookies import CookieJar
from exporter.probes.net import ProbeFailure
from exporter.result import FailureReason, Labels, MetricFamily, ProbeResult, Trace
from exporter.types import Secret

# Semantics:
# - Steps run in order, each on fresh connections, with the http prober's client and checks; the
#   cookies every response sets are sent with later requests, as a browser would.
# - A step passes when its response passes the http checks (valid_status_codes, the regexp and
#   header checks), then every expect_json condition, then every extract finds its value. The
#   first step that fails ends the journey: the probe fails with that step's reason, its message
#   names the step, and the steps after it are reported as not run.
# - ``{{name}}`` in a step's url, headers and body is replaced by the value a previous step
#   extracted, inserted as it is (no escaping). ``${NAME}`` stays what it is everywhere else:
#   an environment reference that Secret values (headers, body) expand when the config loads.
#   Variables are not expanded in body_file (it is sent byte for byte) nor in the auth options.
# - Whole-probe values, so the http rules and dashboards work unchanged: probe_http_duration_seconds
#   adds up every step's phases, probe_dns_lookup_time_seconds every step's lookups, and
#   probe_ssl_earliest_cert_expiry is the earliest over all steps; the other probe_http_* values,
#   the TLS version and the IP values are those of the last step run.
# - Reasons: an expect_json condition that fails or a body that is not JSON is ``body``; a
#   missing extract source is ``body`` (json, regexp) or ``header`` (header, cookie); the rest are
#   the http prober's reasons.

PHASES = httpclient.PHASES
# Combined over steps rather than taken from the last one (see above).
_EARLIEST = frozenset({"probe_ssl_earliest_cert_expiry", "probe_ssl_last_chain_expiry_timestamp_seconds"})
_SUMMED = frozenset({"probe_dns_lookup_time_seconds"})


# The families this kind writes beyond every probe's own (for help text and docs).
METRICS = (
    httpclient.HTTP_METRICS[0],
    httpclient.HTTP_METRICS[1],
    MetricFamily(
        "probe_flow_step_success",
        "1 if the journey step ran and passed, 0 if it failed or did not run.",
        ("step",),
    ),
    MetricFamily(
        "probe_flow_step_ran",
        "1 if the journey step ran, 0 if an earlier step failed first.",
        ("step",),
    ),
    MetricFamily(
        "probe_flow_failed_step",
        "1 for the journey step that failed (or was cut off by the timeout), else 0.",
        ("step",),
    ),
    MetricFamily(
        "probe_flow_step_duration_seconds",
        "How long the journey step took, 0 when it did not run.",
        ("step",),
    ),
    MetricFamily(
        "probe_flow_step_http_duration_seconds",
        "Duration of each HTTP phase of the journey step.",
        ("step", "phase"),
    ),
    MetricFamily(
        "probe_flow_step_status_code",
        "Status code of the journey step's final response, 0 without one.",
        ("step",),
    ),
    *net.ADDRESS_METRICS,
    *net.TLS_METRICS,
    net.REGEX_METRIC,
)


async def probe_flow(request: ProbeRequest) -> ProbeResult:
    """Run the journey's steps in order; the failing step raises ProbeFailure."""
    trace = request.trace
    httpclient.record_defaults(trace)
    if not request.module.section(FlowProbe).steps:
        # The loader refuses this; a module built in code (probe --prober flow) may not.
        return trace.fail(FailureReason.OTHER, "the journey has no steps")
    await _Journey(request).run()
    return trace.succeed()


KIND = ProberKind("flow", FlowProbe, probe_flow, required=FlowProbe.required, metrics=METRICS, phases=PHASES)


class _Journey:
    """One run of the steps; each step records into a trace of its own, merged at the end."""

    def __init__(self, request: ProbeRequest) -> None:
        self.request = request
        self.settings = request.module.section(FlowProbe)
        self.base = httpclient.with_scheme(request.target.strip())
        self.jar = CookieJar()
        self.variables: dict[str, str] = {}
        # The steps that started, in order, with their traces and durations.
        self.traces: dict[str, Trace] = {}
        self.durations: dict[str, float] = {}
        self.passed: set[str] = set()

    async def run(self) -> None:
        try:
            for step in self.settings.steps:
                trace = Trace(self.request.trace.clock)
                httpclient.record_defaults(trace)
                self.traces[step.name] = trace
                try:
                    await self._step(step, trace)
                except ProbeFailure as failure:
                    raise ProbeFailure(failure.reason, f"step {step.name}: {failure.message}") from None
                finally:
                    self.durations[step.name] = trace.elapsed()
                self.passed.add(step.name)
        finally:
            # Also on cancellation: a timeout still shows which step it stopped.
            self._record()

    async def _step(self, step: FlowStep, trace: Trace) -> None:
        url = urljoin(self.base, self._expand(step.url))
        needs_body = bool(step.expect_json) or any(e.json or e.regexp for e in step.extract.values())
        client = httpclient.HTTPClient(
            self._http_settings(step), trace, self.request.guard, self.jar, needs_body
        )
        response = await client.fetch(url)
        await client.judge(response)
        data = (response.body.data if response.body is not None else None) or b""
        document: object = _MISSING
        if step.expect_json or any(e.json for e in step.extract.values()):
            document = await offloop.off_loop_if_big(len(data), _parse_json, data)
        for condition in step.expect_json:
            problem = _condition_problem(condition, document)
            if problem is not None:
                if isinstance(problem, _RegexMismatch):
                    trace.set("probe_failed_due_to_regex", 1)
                raise ProbeFailure(FailureReason.BODY, str(problem))
        for name, extract in step.extract.items():
            self.variables[name] = await self._extract(name, extract, document, data, response)

    def _http_settings(self, step: FlowStep) -> HTTPProbe:
        flow = self.settings
        headers: dict[str, tuple[str, Secret]] = {}
        for name, value in (*flow.headers.items(), *step.headers.items()):
            headers[name.lower()] = (name, Secret(self._expand(value.reveal())))
        # The step's options, with the module's headers under its own and variables expanded.
        options = {
            **step.request_options(),
            "headers": MappingProxyType(dict(headers.values())),
            "body": self._expand(step.body.reveal()) if step.body is not None else "",
        }
        return HTTPProbe(
            **options,
            max_redirects=flow.max_redirects,
            body_size_limit=flow.body_size_limit,
            preferred_ip_protocol=flow.preferred_ip_protocol,
            ip_protocol_fallback=flow.ip_protocol_fallback,
            tls_config=flow.tls_config,
        )

    def _expand(self, text: str) -> str:
        # The loader made sure every reference names a variable an earlier step extracts.
        return VARIABLE_REF_RE.sub(lambda m: self.variables.get(m.group(1), m.group(0)), text)

    async def _extract(
        self, name: str, extract: Extract, document: object, data: bytes, response: httpclient.Response
    ) -> str:
        # Messages name the variable and its source, never the value: it may be a credential.
        if extract.json:
            value = _find(document, extract.json)
            if value is _MISSING:
                raise ProbeFailure(FailureReason.BODY, f"extract {name}: {extract.json} is missing")
            return value if isinstance(value, str) else _json_text(value)
        if extract.regexp is not None:
            match = await extract.regexp.search_body(data)
            if match is None:
                raise ProbeFailure(
                    FailureReason.BODY, f"extract {name}: regexp {extract.regexp.source!r} did not match"
                )
            value = match.group(1) if match.re.groups else match.group(0)
            # The value goes into later URLs and headers: undecodable bytes become U+FFFD.
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
        if extract.header:
            values = response.values(extract.header)
            if not values:
                raise ProbeFailure(
                    FailureReason.HEADER, f"extract {name}: header {extract.header} is missing"
                )
            return values[0]
        value = self.jar.get(extract.cookie)
        if value is None:
            raise ProbeFailure(FailureReason.HEADER, f"extract {name}: no cookie {extract.cookie!r} was set")
        return value

    def _record(self) -> None:
        """Per-step series for every configured step, and the whole-probe values."""
        main = self.request.trace
        last: dict[str, float] = {}
        labelled: dict[str, list[tuple[Labels, float]]] = {}
        for step in self.settings.steps:
            trace = self.traces.get(step.name)
            ran = trace is not None
            passed = step.name in self.passed
            label: Labels = (("step", step.name),)
            main.set("probe_flow_step_ran", 1 if ran else 0, label)
            main.set("probe_flow_step_success", 1 if passed else 0, label)
            main.set("probe_flow_failed_step", 1 if ran and not passed else 0, label)
            main.set("probe_flow_step_duration_seconds", self.durations.get(step.name, 0.0), label)
            status = trace.get("probe_http_status_code") if trace is not None else None
            main.set("probe_flow_step_status_code", status or 0, label)
            # A snapshot of what the step recorded; its success flag means nothing here.
            seen = trace.succeed() if trace is not None else None
            for phase in PHASES:
                seconds = seen.phases.get(phase, 0.0) if seen is not None else 0.0
                main.set("probe_flow_step_http_duration_seconds", seconds, (*label, ("phase", phase)))
                main.add_phase(phase, seconds)
            if seen is None:
                continue
            step_labelled: dict[str, list[tuple[Labels, float]]] = {}
            for sample in seen.samples:
                if sample.labels:
                    step_labelled.setdefault(sample.name, []).append((sample.labels, sample.value))
                elif sample.name in _EARLIEST:
                    last[sample.name] = min(last.get(sample.name, sample.value), sample.value)
                elif sample.name in _SUMMED:
                    last[sample.name] = last.get(sample.name, 0.0) + sample.value
                else:
                    last[sample.name] = sample.value
            labelled.update(step_labelled)
        for name, value in last.items():
            main.set(name, value)
        for name, samples in labelled.items():
            for labels, value in samples:
                main.set(name, value, labels)


# --- JSON -----------------------------------------------------------------------------------

_MISSING: object = object()


def _parse_json(text: str | bytes) -> object:
    try:
        return offloop.loads_json(text)
    except ValueError as err:
        detail = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
        raise ProbeFailure(FailureReason.BODY, f"response body is not JSON: {detail}") from None
    except RecursionError:
        raise ProbeFailure(FailureReason.BODY, "response body is JSON nested too deeply") from None


@functools.lru_cache(maxsize=1024)
def _parts(path: str) -> tuple[str | int, ...]:
    return json_path_parts(path)


def _find(document: object, path: str) -> object:
    """The value at ``path``, or _MISSING."""
    value = document
    for part in _parts(path):
        if isinstance(part, int):
            if not isinstance(value, list) or not -len(value) <= part < len(value):
                return _MISSING
            value = value[part]
        else:
            if not isinstance(value, dict) or part not in value:
                return _MISSING
            value = value[part]
    return value


def _json_text(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return _json_text(value)


def _describe(value: object) -> str:
    """A value for a failure message: numbers, booleans and null in full, strings not (secrets)."""
    if value is None or isinstance(value, bool) or _is_number(value):
        return _json_text(value)
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return "an object"


def _equals(value: object, expected: str) -> bool:
    if isinstance(value, str):
        return value == expected
    if _is_number(value):
        try:
            return float(expected) == value
        except ValueError:
            return False
    return _json_text(value) == expected


_COMPARISONS = (
    ("gt", ">", operator.gt),
    ("ge", ">=", operator.ge),
    ("lt", "<", operator.lt),
    ("le", "<=", operator.le),
)


class _RegexMismatch(str):
    """A problem found by a ``matches`` regexp, which blackbox counts in probe_failed_due_to_regex."""

    __slots__ = ()


def _condition_problem(condition: JSONCondition, document: object) -> str | None:
    """Why ``condition`` does not hold for ``document``, or None when it does."""
    path = condition.path
    value = _find(document, path)
    if value is _MISSING:
        if condition.exists is False:
            return None
        return f"{path} is missing"
    if condition.exists is False:
        return f"{path} exists, expected it not to"
    if condition.equals is not None and not _equals(value, condition.equals):
        return f"{path} is {_describe(value)}, expected {condition.equals!r}"
    if condition.matches is not None:
        if isinstance(value, list | dict):
            return f"{path} is {_describe(value)}, expected a value matching {condition.matches.source!r}"
        text = value if isinstance(value, str) else _json_text(value)
        if not condition.matches.search(text):
            return _RegexMismatch(f"{path} does not match {condition.matches.source!r}")
    for name, symbol, compare in _COMPARISONS:
        bound = getattr(condition, name)
        if bound is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{path} is {_describe(value)}, expected a number {symbol} {_number(bound)}"
        if not compare(value, bound):
            return f"{path} is {_number(value)}, expected {symbol} {_number(bound)}"
    return None
