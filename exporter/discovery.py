"""File discovery: services listed in files matching globs, re-read when the files change."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exporter.config import Config, Service, parse_service_file, reuse_unchanged, share_equal_parts
from exporter.errors import ConfigError, ConfigIssue

log = logging.getLogger(__name__)


@dataclass
class FileState:
    """What one discovered file last gave: its digest, its services, and whether it was valid."""

    digest: bytes
    services: tuple[Service, ...] = ()
    valid: bool = True
    issues: list[ConfigIssue] = field(default_factory=list)
    # Each service's fingerprint, by name, when the file was parsed with them (see settle).
    fingerprints: Mapping[str, bytes] = field(default_factory=dict)


@dataclass
class Scan:
    """The files that match now: those gone since the last read and those to parse."""

    paths: list[str]
    gone: list[str]
    # (path, digest, text) of each new or changed file
    changed: list[tuple[str, bytes, str]] = field(default_factory=list)


# A parsed file: its services with their fingerprints, or every problem it has.
ParsedFile = tuple[tuple[Service, ...], Mapping[str, bytes]] | ConfigError


def parse_files(changed: Sequence[tuple[str, bytes, str]], config: Config) -> list[ParsedFile]:
    """Parse scanned files against ``config``'s modules; equal settings are held once.

    Pure work with no state, so it can run in a thread or in a child process.
    """
    parsed: list[ParsedFile] = []
    for path, _, text in changed:
        try:
            services = parse_service_file(text, path, config)
        except ConfigError as err:
            parsed.append(err)
            continue
        shared = share_equal_parts(dataclasses.replace(config, services=services))
        parsed.append((shared.services, shared.fingerprints))
    return parsed


class ServiceFiles:
    """Reads the files matching ``service_files`` and merges their services with the static ones.

    An invalid file is reported and keeps the services it last gave, so a typo does not stop
    monitoring; a file that disappears takes its services with it.
    """

    def __init__(self) -> None:
        self.files: dict[str, FileState] = {}

    def copy(self) -> ServiceFiles:
        """Another reader starting from what this one last read."""
        other = ServiceFiles()
        other.files = dict(self.files)
        return other

    def paths(self, config: Config) -> list[str]:
        base = Path(config.source).parent if config.source else Path.cwd()
        found: set[str] = set()
        for pattern in config.service_files:
            full = pattern if Path(pattern).is_absolute() else str(base / pattern)
            found.update(p for p in glob.glob(full) if Path(p).is_file())
        return sorted(found)

    def scan(self, config: Config, force: bool = False) -> Scan:
        """Read the files that match; which are gone and which need parsing (new or changed).

        ``force`` parses unchanged files too (their modules may have changed).
        """
        paths = self.paths(config)
        scan = Scan(paths=paths, gone=sorted(set(self.files) - set(paths)))
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                log.error("cannot read service file %s: %s", path, err.strerror)
                continue
            digest = hashlib.sha256(data).digest()
            previous = self.files.get(path)
            if previous is None or previous.digest != digest or force:
                scan.changed.append((path, digest, data.decode("utf-8", errors="replace")))
        return scan

    def settle(self, scan: Scan, parsed: Sequence[ParsedFile]) -> bool:
        """Take in what parsing the scanned files gave; True if the services may have changed.

        An unchanged service keeps the object it had (found by fingerprint), so comparing the
        old and new service sets stays cheap. The new state replaces the old in one assignment.
        """
        files = {path: state for path, state in self.files.items() if path in scan.paths}
        for gone in scan.gone:
            log.info("service file %s is gone; its services are removed", gone)
        for (path, digest, _), result in zip(scan.changed, parsed, strict=True):
            previous = files.get(path)
            if isinstance(result, ConfigError):
                kept = previous.services if previous is not None else ()
                files[path] = FileState(digest, kept, valid=False, issues=result.issues)
                for issue in result.issues:
                    log.error("invalid service file, keeping its last good services: %s: %s", path, issue)
                continue
            services, prints = result
            if previous is not None:
                services = reuse_unchanged(services, prints, previous.services, previous.fingerprints)
            files[path] = FileState(digest, services, fingerprints=prints)
        self.files = files
        return bool(scan.gone or scan.changed)

    def refresh(self, config: Config, force: bool = False) -> bool:
        """Re-read and parse changed files here; True if the services may have changed."""
        scan = self.scan(config, force)
        return self.settle(scan, parse_files(scan.changed, config))

    def merge(self, static: tuple[Service, ...]) -> list[Service]:
        """Static services first, then each file's, skipping (and reporting) duplicate names."""
        merged = list(static)
        taken = {s.name: "the config file" for s in static}
        for path, state in sorted(self.files.items()):
            for service in state.services:
                if service.name in taken:
                    log.error(
                        "service file %s: service %r is already defined in %s; ignoring this one",
                        path,
                        service.name,
                        taken[service.name],
                    )
                    continue
                taken[service.name] = path
                merged.append(service)
        return merged

    @property
    def invalid_files(self) -> list[str]:
        return [path for path, state in self.files.items() if not state.valid]
