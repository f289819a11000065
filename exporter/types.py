"""Value types the config is made of: durations, regexes, secrets, sizes, status code ranges."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from exporter import offloop

_DURATION_RE = re.compile(
    r"^(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?"
    r"(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?$"
)
_DURATION_UNITS = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}


class Duration(float):
    """Seconds, written in Prometheus duration syntax (``1m30s``, ``500ms``)."""

    @classmethod
    def from_yaml(cls, value: Any) -> Duration:
        if not isinstance(value, str):
            raise ValueError(f"must be a duration such as 30s or 1m30s, got {value!r}")
        match = _DURATION_RE.match(value)
        if value == "0":
            return cls(0.0)
        if not value or match is None:
            raise ValueError(f"must be a duration such as 30s or 1m30s, got {value!r}")
        try:
            total = sum(int(text) * _DURATION_UNITS[unit] for unit, text in match.groupdict().items() if text)
        except (OverflowError, ValueError):
            raise ValueError(
                f"must be a duration such as 30s or 1m30s, got one too long: {value[:40]!r}"
            ) from None
        return cls(total)

    def __str__(self) -> str:
        return format_duration(float(self))

    def __repr__(self) -> str:
        return f"Duration({format_duration(float(self))})"


_GO_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class GoDuration(Duration):
    """Seconds, written as Go's time.ParseDuration reads them (``1.5s``, ``1h30m``, ``250ms``).

    blackbox's module ``timeout`` is a Go duration: fractions and ``us``/``ns`` work there, and
    ``d``, ``w`` and ``y`` do not, so the same is true of a module's timeout here.
    """

    @classmethod
    def from_yaml(cls, value: Any) -> GoDuration:
        text = value if isinstance(value, str) else ""
        body = text[1:] if text[:1] == "+" else text
        if body == "0":
            return cls(0.0)
        parts = _GO_DURATION_RE.findall(body)
        if not body or "".join(number + unit for number, unit in parts) != body:
            raise ValueError(
                f"must be a duration as Go writes it, such as 5s, 1.5s or 1m30s (units h, m, s, ms, "
                f"us, ns), got {value!r}"
            )
        total = sum(float(number) * _GO_UNITS[unit] for number, unit in parts)
        if total > 290 * 365 * 86400:  # Go's durations end at about 290 years
            raise ValueError(f"must be a duration as Go writes it, got one too long: {text[:40]!r}")
        return cls(total)


def format_duration(seconds: float) -> str:
    """Render seconds in Prometheus duration syntax, e.g. 90 -> ``1m30s``."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)


# Go's regexp, and so blackbox, speaks RE2; the C++ RE2 shares its syntax and its promise that
# matching is linear in the input, so no pattern and no body can stall the exporter.
@functools.cache
def _re2() -> tuple[Any, Any]:
    """The re2 module and our options, loaded with the first pattern (2.6 MiB a process without one saves)."""
    import re2  # type: ignore[import-untyped]

    options = re2.Options()
    options.log_errors = False  # the config loader reports errors; RE2 must not print them too
    return re2, options


# Go refuses \\C (any byte) although the C++ RE2 accepts it.
_GO_REFUSES = re.compile(r"(?<!\\)(?:\\\\)*\\C")


class RegexMatch(Protocol):
    """The part of a match object the probes use (Python's re and RE2 agree on it)."""

    def group(self, group: int | str = 0, /) -> Any: ...

    def groups(self) -> tuple[Any, ...]: ...

    def groupdict(self) -> dict[str, Any]: ...

    @property
    def re(self) -> Any: ...


@dataclass(frozen=True, slots=True, eq=False)
class Regex:
    """A regular expression in blackbox's (RE2) syntax, compiled once; matching is linear."""

    yaml_string: ClassVar[bool] = True  # read from YAML as Go reads a string (see yamlread)
    source: str
    pattern: Any  # re2._Regexp, which ships no type information

    @classmethod
    def from_yaml(cls, value: Any) -> Regex:
        if not isinstance(value, str):
            raise ValueError(f"must be a regular expression string, got {value!r}")
        if _GO_REFUSES.search(value):
            raise ValueError(f"invalid regular expression {_shorten(value)}: invalid escape sequence: `\\C`")
        re2, options = _re2()
        try:
            return cls(value, re2.compile(value, options))
        except re2.error as err:
            raise ValueError(f"invalid regular expression {_shorten(value)}: {_re2_reason(err)}") from None

    def search(self, text: str | bytes) -> RegexMatch | None:
        """The first match in ``text`` (a body is searched as the bytes that arrived, as Go does).

        Text that kept undecodable bytes as surrogates is searched as those bytes; its groups
        then come back as bytes (``match_text`` turns them into text again).
        """
        try:
            return self.pattern.search(text)  # type: ignore[no-any-return]
        except UnicodeEncodeError:
            assert isinstance(text, str)
            return self.pattern.search(text.encode("utf-8", "surrogateescape"))  # type: ignore[no-any-return]

    async def search_body(self, data: bytes) -> RegexMatch | None:
        """Search a response body as Go does (see ``offloop.go_subject``), off the loop when big."""
        return await self.search_subject(await offloop.off_loop_if_big(len(data), offloop.go_subject, data))

    async def search_subject(self, subject: bytes) -> RegexMatch | None:
        """Search text already made by ``offloop.go_subject``; in a thread when it is big
        (RE2 releases the interpreter lock while it matches)."""
        return await offloop.off_loop_if_big(len(subject), self.search, subject)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Regex) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __reduce__(self) -> tuple[Any, ...]:
        # Compiled RE2 programs do not pickle; configs cross process boundaries as source text.
        return (Regex.from_yaml, (self.source,))

    def __str__(self) -> str:
        return self.source


def match_text(value: str | bytes | None) -> str:
    """A group's value as text, keeping undecodable bytes as surrogates."""
    if value is None:
        return ""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _shorten(value: str) -> str:
    return repr(value) if len(value) <= 60 else f"{value[:40]!r}..."


def _re2_reason(err: Exception) -> str:
    reason = err.args[0] if err.args else str(err)
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    # RE2 says "what: where"; quote the offending part as Go's regexp does, and say why for
    # the Perl and Python habits RE2 leaves out to stay linear.
    what, sep, where = str(reason).partition(": ")
    if not sep:
        return what
    hint = next((text for prefix, text in _RE2_HINTS if where.startswith(prefix)), "")
    if where[:1] == "{" and "repetition" in what:
        hint = "RE2 repeats at most 1000 times"
    return f"{what}: `{where}`" + (f" ({hint})" if hint else "")


_RE2_HINTS = (
    ("(?=", "RE2 has no lookaround assertions"),
    ("(?!", "RE2 has no lookaround assertions"),
    ("(?<=", "RE2 has no lookaround assertions"),
    ("(?<!", "RE2 has no lookaround assertions"),
    ("(?>", "RE2 has no atomic groups"),
    ("++", "RE2 has no possessive quantifiers"),
    ("*+", "RE2 has no possessive quantifiers"),
    ("?+", "RE2 has no possessive quantifiers"),
    ("}+", "RE2 has no possessive quantifiers"),
    ("\\Z", "write \\z for the end of the text"),
    *((f"\\{digit}", "RE2 has no backreferences") for digit in "123456789"),
)


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Secret(str):
    """A credential: ``${ENV}`` references are expanded at load, and it never prints."""

    __slots__ = ()
    yaml_string: ClassVar[bool] = True  # read from YAML as Go reads a string (see yamlread)
    yaml_secret: ClassVar[bool] = True  # never quoted in a config error (see yamlread)

    @classmethod
    def from_yaml(cls, value: Any) -> Secret:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        missing = [name for name in _ENV_RE.findall(value) if name not in os.environ]
        if missing:
            raise ValueError(f"environment variable {missing[0]} is not set")
        return cls(_ENV_RE.sub(lambda m: os.environ[m.group(1)], value))

    def __repr__(self) -> str:
        return "<secret>"

    def __str__(self) -> str:
        return "<secret>"

    def reveal(self) -> str:
        """The plain value, for the one place that sends it."""
        return str.__str__(self)


class SecretValues(tuple[Secret, ...]):
    """One secret or several, written as a string or a list of strings (gRPC metadata values)."""

    yaml_string_or_list: ClassVar[bool] = True
    item_type: ClassVar[type] = Secret

    def __repr__(self) -> str:
        return f"<{len(self)} secret{'s' if len(self) != 1 else ''}>"


class ProxyURL(Secret):
    """A forward proxy's URL (``http://``, ``https://``, ``socks5://`` or ``socks5h://``): it may
    carry credentials, so it prints with its password hidden, as Go's URL.Redacted shows it.
    Empty means no proxy."""

    __slots__ = ()

    @classmethod
    def from_yaml(cls, value: Any) -> ProxyURL:
        text = Secret.from_yaml(value).reveal()
        if not text:
            return cls("")
        scheme, separator, rest = text.partition("://")
        if not separator or scheme.lower() not in ("http", "https", "socks5", "socks5h"):
            hint = " (of SOCKS, socks5 and socks5h only)" if scheme.lower().startswith("socks") else ""
            # Without a scheme, "user:password@host" would pass redact_url unchanged.
            shown = redact_url(text if separator else f"http://{text}").removeprefix(
                "" if separator else "http://"
            )
            raise ValueError(
                f"must be an http://, https://, socks5:// or socks5h:// proxy URL{hint}, got {shown!r}"
            )
        host = rest.split("/", 1)[0].rpartition("@")[2]
        if not host or host.startswith(":"):
            raise ValueError(f"must name the proxy's host, got {redact_url(text)!r}")
        return cls(text)

    def __repr__(self) -> str:
        return f"ProxyURL({redact_url(self.reveal())!r})"

    def __str__(self) -> str:
        return redact_url(self.reveal())


def redact_url(url: str) -> str:
    """A URL with the password of its user info replaced by ``xxxxx``, as Go's URL.Redacted does.

    The authority is found as urlsplit finds it (up to the first ``/?#``, user info before its
    last ``@``), so what the probe would send as a password is exactly what is hidden.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:xxxxx@{host}{rest[end:]}"


def redact_target(target: str) -> str:
    """A probe target as log lines show it: the password hidden and no query or fragment.

    A query string may carry a token as well as user info may; every probe kind's log lines
    go through this one function, whatever the shape of its targets.
    """
    return redact_url(target).partition("?")[0].partition("#")[0]


def read_secret_file(path: str) -> str:
    """A secret kept in a file, without its trailing newline."""
    return Path(path).read_text(encoding="utf-8").rstrip("\r\n")


_SIZE_RE = re.compile(r"^(\d+)\s*([KMGT]i?B?|B)?$", re.IGNORECASE)


class ByteSize(int):
    """A size in bytes; ``10MB`` and ``10MiB`` both mean 10 * 1024 * 1024, as blackbox reads them."""

    @classmethod
    def from_yaml(cls, value: Any) -> ByteSize:
        if isinstance(value, bool):
            raise ValueError(f"must be a size such as 10MB, got {value!r}")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"must not be negative, got {value}")
            return cls(value)
        match = _SIZE_RE.match(str(value).strip())
        if match is None:
            raise ValueError(f"must be a size such as 10MB or 512KiB, got {value!r}")
        number, unit = match.groups()
        power = "BKMGT".index(unit[0].upper()) if unit else 0
        return cls(int(number) * 1024**power)


@dataclass(frozen=True, slots=True)
class StatusRange:
    """An HTTP status code or an inclusive range of them (``200-299``)."""

    low: int
    high: int

    @classmethod
    def from_yaml(cls, value: Any) -> StatusRange:
        if isinstance(value, str) and value.strip().isdigit():
            # blackbox reads status codes as integers and refuses '200'; a range is ours alone.
            raise ValueError(f"must be a status code written as a number (200, not '200'), got {value!r}")
        text = str(value).strip()
        low_text, _, high_text = text.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if high_text else low
        except ValueError:
            raise ValueError(f"must be a status code or a range like 200-299, got {value!r}") from None
        if not (100 <= low <= high <= 599):
            raise ValueError(f"must be a status code or a range within 100-599, got {value!r}")
        return cls(low, high)

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and self.low <= code <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One probe_allowlist entry: a CIDR network, a host name glob or a unix socket path glob."""

    source: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    glob: re.Pattern[str] | None
    # A glob of unix socket paths (``/run/app/*.sock``, ``@name``): ``*`` stays within a directory.
    path: re.Pattern[str] | None = None

    @classmethod
    def from_yaml(cls, value: Any) -> HostPattern:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"must be a CIDR such as 10.0.0.0/8 or a host glob, got {value!r}")
        text = value.strip()
        if text.startswith(("/", "@")):
            regex = "".join("[^/\0]*" if c == "*" else "[^/\0]" if c == "?" else re.escape(c) for c in text)
            return cls(text, None, None, re.compile(regex + r"\Z"))
        looks_numeric = bool(re.fullmatch(r"[0-9.]+(/\d+)?|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(/\d+)?", text))
        if looks_numeric:
            try:
                return cls(text, ipaddress.ip_network(text, strict=False), None)
            except ValueError as err:
                raise ValueError(f"invalid network {text!r}: {err}") from None
        if not re.fullmatch(r"[A-Za-z0-9*?._-]+", text):
            raise ValueError(
                "must be a CIDR, a host glob of letters, digits, '.', '-', '*', or a socket path"
                f" starting with / or @, got {text!r}"
            )
        regex = "".join("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c) for c in text.lower())
        return cls(text, None, re.compile(regex + r"\Z"))

    def __str__(self) -> str:
        return self.source
