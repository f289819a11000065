"""Value types the config is made of: durations, regexes, secrets, sizes, status code ranges."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# Go's RE2 accepts a few spellings Python's re does not; blackbox configs use them.
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7F",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1F\\x7F",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}


def translate_go_regex(pattern: str) -> str:
    """Rewrite RE2 syntax that Python lacks into its Python equivalent."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "z":
                out.append("\\Z")
            elif nxt == "Q":
                end = pattern.find("\\E", i + 2)
                literal = pattern[i + 2 :] if end < 0 else pattern[i + 2 : end]
                out.append(re.escape(literal))
                i = n if end < 0 else end + 2
                continue
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[" and pattern.startswith("[:", i):
            end = pattern.find(":]", i + 2)
            name = pattern[i + 2 : end] if end > 0 else ""
            negated = name.startswith("^")
            if name.lstrip("^") in _POSIX_CLASSES:
                body = _POSIX_CLASSES[name.lstrip("^")]
                # Inside a bracket expression the class contributes its ranges.
                out.append(f"[^{body}]" if negated and not _inside_class(out) else body)
                i = end + 2
                continue
        if ch == "(" and pattern.startswith("(?<", i) and not pattern.startswith(("(?<=", "(?<!"), i):
            out.append("(?P<")
            i += 3
            continue
        if ch in "^$" and i + 1 < n and pattern[i + 1] in "*+?{" and not _inside_class(out):
            out.append(f"(?:{ch})")
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _inside_class(prefix: list[str]) -> bool:
    text = "".join(prefix)
    depth = False
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "[" and not depth:
            depth = True
        elif text[i] == "]" and depth:
            depth = False
        i += 1
    return depth


@dataclass(frozen=True, slots=True)
class Regex:
    """A regular expression in blackbox's (RE2) syntax, compiled once."""

    source: str
    pattern: re.Pattern[str]

    @classmethod
    def from_yaml(cls, value: Any) -> Regex:
        if not isinstance(value, str):
            raise ValueError(f"must be a regular expression string, got {value!r}")
        try:
            return cls(value, re.compile(translate_go_regex(value)))
        except re.error as err:
            raise ValueError(f"invalid regular expression {value!r}: {err}") from None
        except (OverflowError, RecursionError) as err:
            # Python's parser gives up on huge repeat counts and deeply nested groups this way.
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise ValueError(f"invalid regular expression {value[:40]!r}...: {reason}") from None

    def search(self, text: str) -> re.Match[str] | None:
        return self.pattern.search(text)

    def __str__(self) -> str:
        return self.source


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Secret(str):
    """A credential: ``${ENV}`` references are expanded at load, and it never prints."""

    __slots__ = ()

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
    """One probe_allowlist entry: a CIDR network or a host name glob."""

    source: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    glob: re.Pattern[str] | None

    @classmethod
    def from_yaml(cls, value: Any) -> HostPattern:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"must be a CIDR such as 10.0.0.0/8 or a host glob, got {value!r}")
        text = value.strip()
        looks_numeric = bool(re.fullmatch(r"[0-9.]+(/\d+)?|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(/\d+)?", text))
        if looks_numeric:
            try:
                return cls(text, ipaddress.ip_network(text, strict=False), None)
            except ValueError as err:
                raise ValueError(f"invalid network {text!r}: {err}") from None
        if not re.fullmatch(r"[A-Za-z0-9*?._-]+", text):
            raise ValueError(f"must be a CIDR or a host glob of letters, digits, '.', '-', '*', got {text!r}")
        regex = "".join("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c) for c in text.lower())
        return cls(text, None, re.compile(regex + r"\Z"))

    def __str__(self) -> str:
        return self.source
