"""Work on one answer that is too big for the event loop: a small pool of threads, and slicing.

A thread helps the loop only while it runs Python bytecode or a C call that releases the
interpreter lock (RE2, zlib, bcrypt do). One long C call that holds it (``json.loads`` over
10 MiB, ``bytes.decode`` of a big body) blocks the loop for its whole length, thread or not. So
the functions here cut such work into slices of ``SLICE`` bytes, each a short C call, and the
interpreter hands the lock back to the loop between them (sys.getswitchinterval, 5 ms).

One exception, measured: JSON is parsed by the C scanner in one go (see ``loads_json``).

The pool is the exporter's own, apart from asyncio's default one (config reloads and file
discovery use that), and small: two threads, one per core of a small machine. A job whose probe
timed out before it started is cancelled with the probe; one already running finishes (each is
linear in its input, which body_size_limit bounds).
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")

# Answers up to this size are worked on the loop: well under a millisecond.
INLINE_BYTES = 64 * 1024
# The most one C call in a thread works on before the loop can get the interpreter back.
SLICE = 256 * 1024

_POOL = ThreadPoolExecutor(2, thread_name_prefix="answers")


async def in_thread(func: Callable[..., _T], *args: object) -> _T:
    """``func(*args)`` on the answers pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_POOL, functools.partial(func, *args))


async def off_loop_if_big(size: int, func: Callable[..., _T], *args: object) -> _T:
    """``func(*args)`` on the loop for an input of ``size`` bytes up to INLINE_BYTES, else in a thread."""
    if size <= INLINE_BYTES:
        return func(*args)
    return await in_thread(func, *args)


def _one_fffd_per_byte(err: UnicodeError) -> tuple[str, int]:
    # Go reads each byte of an invalid sequence as its own U+FFFD; Python's "replace" would
    # write one for a cut-off sequence, and a pattern counting characters would see the difference.
    assert isinstance(err, UnicodeDecodeError)
    return "\ufffd" * (err.end - err.start), err.end


_GO_ERRORS = "outage-exporter-go-utf8"
codecs.register_error(_GO_ERRORS, _one_fffd_per_byte)


def go_subject(data: bytes) -> bytes:
    """The bytes Go's regexp matches in ``data``: each invalid UTF-8 byte read as U+FFFD.

    RE2 in UTF-8 mode lets ``.`` and ``[^x]`` skip invalid bytes, where Go matches them as
    U+FFFD; replacing them first makes the verdicts the same. ASCII, the common case, is
    returned as it is; anything else is decoded and encoded again a slice at a time.
    """
    if data.isascii():
        return data
    decoder = codecs.getincrementaldecoder("utf-8")(_GO_ERRORS)
    pieces = [decoder.decode(data[i : i + SLICE]).encode("utf-8") for i in range(0, len(data), SLICE)]
    pieces.append(decoder.decode(b"", final=True).encode("utf-8"))
    return b"".join(pieces)


def loads_json(data: str | bytes) -> object:
    """``json.loads``; callers run it in a thread for a big document.

    The C scanner holds the interpreter lock for the whole document (about 25 ms for 4 MB,
    180 ms at a 10 MiB body_size_limit), which blocks the loop for that long once. Python's own
    scanner would hand the lock back between values, but measured beside a busy loop it is
    worse: it runs fifty times longer, and each of the loop's system calls then waits up to a
    switch interval for the lock (4 MB documents every second made 8 loop samples a second
    over 25 ms, against none with the C scanner). Keep body_size_limit small for JSON.
    """
    return json.loads(data)
