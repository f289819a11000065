"""Loads a large config file in a child process, so a reload does not stall probing.

Parsing 10,000 services takes seconds of pure-Python work. In a thread it holds the GIL in
long stretches against the event loop that starts probes and serves scrapes; in a child
process it costs the loop only the unpickling of the result. Small files are parsed in a
thread: for them a child's start-up costs more than it saves.

The child is ``python -m exporter.configload PATH``: it writes one pickled object to stdout,
either the ``Config`` or the ``ConfigError`` that lists the file's problems. With
``--service-files`` it reads discovered files and the running config's modules, pickled, from
stdin, and answers with what ``discovery.parse_files`` gives for them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter.config import Config, load_config, share_equal_parts
from exporter.discovery import ParsedFile, parse_files
from exporter.errors import ConfigError

log = logging.getLogger(__name__)

# Files at least this big are parsed in a child process (about 2,000 services).
ISOLATE_ABOVE_BYTES = 256 * 1024
# A child that has not answered by then is killed and the file is parsed in a thread instead.
CHILD_TIMEOUT = 120.0
# The interpreter that runs the child: this one.
PYTHON = sys.executable
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


async def load_config_async(path: str, isolate_above: int = ISOLATE_ABOVE_BYTES) -> Config:
    """Load ``path`` without holding up the event loop; raise ConfigError as load_config does."""
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0  # load_config reports the unreadable file
    if size >= isolate_above:
        try:
            return await _load_in_child(path)
        except _ChildFailed as err:
            log.warning("parsing %s in a child process failed (%s); parsing it here instead", path, err)
    return await asyncio.to_thread(load_config, path)


class _ChildFailed(Exception):
    """The child process could not give an answer; not a problem of the config itself."""


async def _load_in_child(path: str) -> Config:
    answer = await _ask_child([path])
    if isinstance(answer, ConfigError):
        raise answer
    if not isinstance(answer, Config):
        raise _ChildFailed(f"unexpected answer of type {type(answer).__name__}")
    return answer


async def parse_files_async(
    changed: Sequence[tuple[str, bytes, str]], config: Config, isolate_above: int = ISOLATE_ABOVE_BYTES
) -> list[ParsedFile]:
    """``discovery.parse_files`` without holding up the event loop: big batches go to a child."""
    if sum(len(text) for _, _, text in changed) >= isolate_above:
        # The child needs the modules and defaults, not the services of the main file.
        request = pickle.dumps((list(changed), dataclasses.replace(config, services=())))
        try:
            answer = await _ask_child(["--service-files"], request)
            if isinstance(answer, list) and len(answer) == len(changed):
                return answer
            raise _ChildFailed(f"unexpected answer of type {type(answer).__name__}")
        except _ChildFailed as err:
            log.warning("parsing service files in a child process failed (%s); parsing them here", err)
    return await asyncio.to_thread(parse_files, changed, config)


async def _ask_child(args: list[str], request: bytes | None = None) -> object:
    """Run ``python -m exporter.configload ARGS`` with ``request`` on stdin; unpickle its answer."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    try:
        child = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "exporter.configload",
            *args,
            stdin=asyncio.subprocess.DEVNULL if request is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as err:
        raise _ChildFailed(f"cannot start it: {err.strerror or err}") from None
    try:
        async with asyncio.timeout(CHILD_TIMEOUT):
            out, err_text = await child.communicate(request)
    except TimeoutError:
        raise _ChildFailed(f"no answer within {CHILD_TIMEOUT:g}s") from None
    except (BrokenPipeError, ConnectionResetError):
        raise _ChildFailed("it closed its input early") from None
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if child.returncode != 0 or not out:
        last = err_text.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise _ChildFailed(f"exit code {child.returncode}: {last[0]}")
    try:
        return pickle.loads(out)
    except Exception as err:  # a truncated or foreign stream: the work is done here instead
        raise _ChildFailed(f"unreadable answer: {err}") from None


def main(argv: list[str]) -> int:
    answer: object
    if argv == ["--service-files"]:
        changed, config = pickle.loads(sys.stdin.buffer.read())
        answer = parse_files(changed, config)
    elif len(argv) == 1 and not argv[0].startswith("--"):
        try:
            answer = share_equal_parts(load_config(argv[0]))
        except ConfigError as err:
            answer = err
    else:
        print("usage: python -m exporter.configload CONFIG_FILE | --service-files", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
