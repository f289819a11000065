"""CEL expressions over a JSON body: blackbox 0.27's fail_if_body_json_matches_cel and _not_matches_cel.

blackbox compiles each expression with cel-go in an environment that declares one variable,
``body`` (of any type), and evaluates it on the body decoded as Go's ``encoding/json`` decodes
into ``any``. Here cel-python (celpy) does the same, with three things made to agree with Go:

- JSON numbers are doubles, as Go decodes them (``body.count`` is ``2.0``, not ``2``).
- ``==`` and ``!=`` compare numbers across int, uint and double, as cel-go's heterogeneous
  equality does (``body.count == 2`` is true); values of other different types are unequal
  rather than an error.
- A name other than ``body`` and the variables of comprehension macros (``exists``, ``all``,
  ``exists_one``, ``map``, ``filter``) is refused at load, as cel-go's checker refuses an
  undeclared reference.

celpy's checks are otherwise its parser's: a type error cel-go's checker would catch at load
(``1 + "a"``) shows up at evaluation, where it fails the probe with the evaluator's message.

celpy itself is behind ``exporter.celengine``, imported with the first expression compiled, so
a process whose services have no CEL check (most) never loads it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

from exporter import offloop

# Messages quote the expression only this far; the evaluator's own text is cut as well (celpy
# prints its whole activation for an undeclared name).
_SHOWN = 60


class CELProblem(Exception):
    """Why an expression gave no verdict on a body: not JSON, an evaluation error, not a boolean."""


def shorten(text: str) -> str:
    return repr(text) if len(text) <= _SHOWN else f"{text[:_SHOWN]!r}..."


@dataclass(frozen=True, slots=True, eq=False)
class CELProgram:
    """One compiled CEL expression over ``body``."""

    yaml_string: ClassVar[bool] = True  # read from YAML as Go reads a string (see yamlread)
    source: str
    program: Any  # celpy.Runner

    @classmethod
    def from_yaml(cls, value: Any) -> CELProgram:
        if not isinstance(value, str):
            raise ValueError(f"must be a CEL expression string, got {value!r}")
        # cel-python is imported with the first expression: most configs have none, and it
        # costs every process that loads it megabytes and a tenth of a second.
        from exporter import celengine

        return cls(value, celengine.compile_program(value))

    def verdict(self, document: Any, stop: threading.Event | None = None) -> bool:
        """The expression's value on ``document`` (the body as CEL values); CELProblem if not a bool.

        Setting ``stop`` from another thread ends the evaluation early (with CELProblem).
        """
        from exporter import celengine

        return celengine.verdict(self.program, self.source, document, stop)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CELProgram) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __reduce__(self) -> tuple[Any, ...]:
        # Compiled programs hold parse trees and closures; configs cross processes as text.
        return (CELProgram.from_yaml, (self.source,))

    def __str__(self) -> str:
        return self.source


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")


def decode_body(data: bytes) -> Any:
    """The body as CEL values, as blackbox decodes it with encoding/json; CELProblem if not JSON."""
    # Go reads each invalid UTF-8 byte as U+FFFD rather than failing.
    text = offloop.go_subject(data).decode("utf-8")
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as err:
        raise CELProblem(f"body is not JSON: {err}") from None
    except RecursionError:
        raise CELProblem("body is not JSON this exporter can read: nested too deeply") from None
    from exporter import celengine

    try:
        return celengine.to_cel(document)
    except (RecursionError, OverflowError):
        raise CELProblem("body is nested too deeply for CEL") from None


def body_problem(
    data: bytes,
    matches: CELProgram | None,
    not_matches: CELProgram | None,
    stop: threading.Event | None = None,
) -> str | None:
    """What blackbox's CEL checks say about ``data``: None when it passes, else why not.

    Decoding and evaluation are one call so that they are worked in a thread as a whole.
    """
    try:
        document = decode_body(data)
        if matches is not None and matches.verdict(document, stop):
            return f"body matched fail_if_body_json_matches_cel {shorten(matches.source)}"
        if not_matches is not None and not not_matches.verdict(document, stop):
            return f"body did not match fail_if_body_json_not_matches_cel {shorten(not_matches.source)}"
    except CELProblem as problem:
        return str(problem)
    return None


async def check_body(data: bytes, matches: CELProgram | None, not_matches: CELProgram | None) -> str | None:
    """``body_problem`` on the answers pool, stopped when the probe is cancelled (its timeout).

    Always in a thread, whatever the body's size: an expression's cost is not the body's (two
    nested comprehensions over 5,000 numbers are 25 million steps), and pure Python on the
    event loop would hold every other probe up for as long.
    """
    if matches is None and not_matches is None:
        return None
    stop = threading.Event()
    try:
        return await offloop.in_thread(body_problem, data, matches, not_matches, stop)
    except asyncio.CancelledError:
        stop.set()
        raise
