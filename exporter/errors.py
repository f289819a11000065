"""Every error the package raises on purpose.

    ExporterError                 base of everything below
    ├── ConfigError               a config file is invalid; carries every ConfigIssue found
    ├── WebConfigError            the --web.config.file is invalid
    └── TargetRefused             /probe was asked for a target outside probe_allowlist

Probes never raise: they map what goes wrong to a FailureReason inside a ProbeResult.
"""

from __future__ import annotations

from dataclasses import dataclass


class ExporterError(Exception):
    """Base class of the package's own errors."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, located by YAML path and line."""

    path: str
    line: int | None
    message: str
    file: str | None = None

    def __str__(self) -> str:
        where = self.path or "<document>"
        if self.line is not None:
            where = f"{where} (line {self.line})"
        return f"{where}: {self.message}"


class ConfigError(ExporterError):
    """A config file could not be loaded; ``issues`` lists every problem at once."""

    def __init__(self, issues: list[ConfigIssue], file: str | None = None) -> None:
        self.issues = issues
        self.file = file
        super().__init__("\n".join(str(i) for i in issues))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[ConfigIssue], str | None]]:
        # Pickled by the child process that parses big files (exporter.configload).
        return ConfigError, (self.issues, self.file)


class WebConfigError(ExporterError):
    """The web config file (TLS and basic auth) is invalid."""


class TargetRefused(ExporterError):
    """A target is not covered by probe_allowlist."""
