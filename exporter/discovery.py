"""File discovery: services listed in files matching globs, re-read when the files change."""

from __future__ import annotations

import glob
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from exporter.config import Config, Service, parse_service_file
from exporter.errors import ConfigError, ConfigIssue

log = logging.getLogger(__name__)


@dataclass
class FileState:
    """What one discovered file last gave: its digest, its services, and whether it was valid."""

    digest: bytes
    services: tuple[Service, ...] = ()
    valid: bool = True
    issues: list[ConfigIssue] = field(default_factory=list)


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

    def refresh(self, config: Config, force: bool = False) -> bool:
        """Re-read changed files; True if the set of discovered services may have changed.

        ``force`` re-parses unchanged files too (their modules may have changed). The new state
        replaces the old in one assignment, so readers on the event loop never see it half done
        while this runs in a thread.
        """
        changed = False
        paths = self.paths(config)
        files = {path: state for path, state in self.files.items() if path in paths}
        for gone in set(self.files) - set(files):
            log.info("service file %s is gone; its services are removed", gone)
            changed = True
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                log.error("cannot read service file %s: %s", path, err.strerror)
                continue
            digest = hashlib.sha256(data).digest()
            previous = files.get(path)
            if previous is not None and previous.digest == digest and not force:
                continue
            changed = True
            try:
                services = parse_service_file(data.decode("utf-8", errors="replace"), path, config)
            except ConfigError as err:
                kept = previous.services if previous is not None else ()
                files[path] = FileState(digest, kept, valid=False, issues=err.issues)
                for issue in err.issues:
                    log.error("invalid service file, keeping its last good services: %s: %s", path, issue)
                continue
            files[path] = FileState(digest, services)
        self.files = files
        return changed

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
