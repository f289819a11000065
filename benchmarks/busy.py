"""Runs a command while the machine does other work, so a benchmark sees a shared host.

    python3 benchmarks/busy.py -- python3 benchmarks/accuracy.py --rates 500 --workers 2

Two other processes run for as long as the command does: one spinning on a core, and one
hashing in 0.2 s bursts every 0.5 s (work that comes and goes, as a neighbour's requests do).
Both are stopped when the command ends; its exit status is this script's.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import subprocess
import sys
import time

BURST = 0.2
PAUSE = 0.3


def spin() -> None:
    while True:
        pass


def bursts() -> None:
    block = b"x" * 100_000
    while True:
        start = time.monotonic()
        while time.monotonic() - start < BURST:
            hashlib.sha256(block).digest()
        time.sleep(PAUSE)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: busy.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    others = [multiprocessing.Process(target=work, daemon=True) for work in (spin, bursts)]
    for other in others:
        other.start()
    try:
        return subprocess.call(argv)
    finally:
        for other in others:
            other.terminate()
            other.join()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
