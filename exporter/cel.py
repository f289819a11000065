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
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import celpy
import lark
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, Evaluator, bool_eq

from exporter import offloop

# Macros that bind their first argument as a variable for the rest.
_MACROS = frozenset({"exists", "all", "exists_one", "map", "filter"})
_VARIABLE = "body"
# Names CEL itself declares: the type values (``type(x) == int``) and the protobuf wrappers.
_BUILTIN_NAMES = frozenset(
    {"bool", "bytes", "double", "duration", "dyn", "int", "list", "map", "null_type", "string"}
    | {"timestamp", "type", "uint", "google"}
)
# Messages quote the expression only this far; the evaluator's own text is cut as well (celpy
# prints its whole activation for an undeclared name).
_SHOWN = 60


class CELProblem(Exception):
    """Why an expression gave no verdict on a body: not JSON, an evaluation error, not a boolean."""


# The evaluator looks at its stop flag after this many tree nodes (a few milliseconds).
_CHECK_EVERY = 1000


class _Stopped(Exception):
    """The probe that wanted the verdict is gone (timed out): evaluation ends early."""


class _StoppableEvaluator(Evaluator):
    """celpy's tree-walking evaluator, which gives up once ``stop`` is set.

    A comprehension over a big array is pure Python, a few microseconds a step, and cannot be
    cancelled from outside its thread; blackbox checks cel-go's interrupt every 100 steps.
    """

    def __init__(self, ast: lark.Tree[Any], activation: Any, stop: threading.Event, count: list[int]) -> None:
        super().__init__(ast, activation)
        self._stop = stop
        self._count = count  # shared with the evaluators of nested comprehensions

    def visit_children(self, tree: lark.Tree[Any]) -> list[Any]:
        self._count[0] += 1
        if self._count[0] % _CHECK_EVERY == 0 and self._stop.is_set():
            raise _Stopped
        return super().visit_children(tree)

    def sub_evaluator(self, ast: lark.Tree[Any]) -> Evaluator:
        return _StoppableEvaluator(ast, self.activation, self._stop, self._count)


def _numeric(value: object) -> bool:
    return isinstance(value, celtypes.IntType | celtypes.UintType | celtypes.DoubleType) and not isinstance(
        value, celtypes.BoolType
    )


def _plain_number(value: Any) -> int | float:
    return float(value) if isinstance(value, celtypes.DoubleType) else int(value)


def _equal(left: Any, right: Any) -> Any:
    if _numeric(left) and _numeric(right):
        # Python compares int with float exactly; celpy's own types refuse the mix.
        return celtypes.BoolType(_plain_number(left) == _plain_number(right))
    try:
        return bool_eq(left, right)
    except TypeError:
        return celtypes.BoolType(False)


def _not_equal(left: Any, right: Any) -> Any:
    result = _equal(left, right)
    return result if isinstance(result, CELEvalError) else celtypes.BoolType(not result)


_FUNCTIONS: dict[str, Any] = {"_==_": _equal, "_!=_": _not_equal}
_ENVIRONMENT = celpy.Environment()


def _shorten(text: str) -> str:
    return repr(text) if len(text) <= _SHOWN else f"{text[:_SHOWN]!r}..."


def _bare_name(tree: lark.Tree[Any]) -> str | None:
    """The name when ``tree`` is an expression made of one identifier, else None."""
    while True:
        if tree.data == "ident" and tree.children:
            return str(tree.children[0])
        subtrees = [child for child in tree.children if isinstance(child, lark.Tree)]
        if len(subtrees) != 1 or len(tree.children) != 1:
            return None
        tree = subtrees[0]


def _free_names(tree: lark.Tree[Any], bound: frozenset[str]) -> Iterator[str]:
    """Identifiers used as variables in ``tree`` that no macro around them binds."""
    if tree.data == "ident":
        name = str(tree.children[0])
        if name not in bound:
            yield name
        return
    if tree.data == "member_dot_arg" and len(tree.children) == 3:
        target, method, args = tree.children
        if str(method) in _MACROS and isinstance(args, lark.Tree) and args.children:
            first = args.children[0]
            variable = _bare_name(first) if isinstance(first, lark.Tree) else None
            if variable is not None and isinstance(target, lark.Tree):
                yield from _free_names(target, bound)
                for arg in args.children[1:]:
                    if isinstance(arg, lark.Tree):
                        yield from _free_names(arg, bound | {variable})
                return
    for child in tree.children:
        if isinstance(child, lark.Tree):
            yield from _free_names(child, bound)


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
        try:
            tree = _ENVIRONMENT.compile(value)
        except CELParseError as err:
            line, column = getattr(err, "line", None), getattr(err, "column", None)
            where = f" at line {line}, column {column}" if line and column else ""
            raise ValueError(
                f"cannot compile CEL expression {_shorten(value)}: syntax error{where}"
            ) from None
        except (lark.exceptions.LarkError, RecursionError) as err:
            reason = type(err).__name__
            raise ValueError(f"cannot compile CEL expression {_shorten(value)}: {reason}") from None
        undeclared = sorted(set(_free_names(tree, _BUILTIN_NAMES | {_VARIABLE})))
        if undeclared:
            raise ValueError(
                f"cannot compile CEL expression {_shorten(value)}: undeclared reference to "
                f"{', '.join(repr(n) for n in undeclared)} (the only variable is {_VARIABLE!r})"
            )
        return cls(value, _ENVIRONMENT.program(tree, functions=_FUNCTIONS))

    def verdict(self, document: Any, stop: threading.Event | None = None) -> bool:
        """The expression's value on ``document`` (the body as CEL values); CELProblem if not a bool.

        Setting ``stop`` from another thread ends the evaluation early (with CELProblem).
        """
        evaluator = _StoppableEvaluator(
            self.program.ast, self.program.new_activation(), stop or threading.Event(), [0]
        )
        try:
            result = evaluator.evaluate({_VARIABLE: document})
        except _Stopped:
            raise CELProblem(f"evaluating {_shorten(self.source)} was stopped: the probe ended") from None
        except CELEvalError as err:
            raise CELProblem(f"evaluating {_shorten(self.source)} failed: {_eval_reason(err)}") from None
        except (RecursionError, ArithmeticError, TypeError, ValueError, KeyError, IndexError) as err:
            raise CELProblem(f"evaluating {_shorten(self.source)} failed: {type(err).__name__}") from None
        if isinstance(result, CELEvalError):
            raise CELProblem(f"evaluating {_shorten(self.source)} failed: {_eval_reason(result)}")
        if not isinstance(result, celtypes.BoolType):
            raise CELProblem(f"{_shorten(self.source)} gave {_type_name(result)}, not a boolean")
        return bool(result)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CELProgram) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __reduce__(self) -> tuple[Any, ...]:
        # Compiled programs hold parse trees and closures; configs cross processes as text.
        return (CELProgram.from_yaml, (self.source,))

    def __str__(self) -> str:
        return self.source


def _type_name(value: object) -> str:
    """CEL's name for the type of ``value`` (celpy returns some results as plain Python values)."""
    for kind, name in (
        (bool, "a bool"),
        (celtypes.UintType, "a uint"),
        (int, "an int"),
        (float, "a double"),
        (str, "a string"),
        (bytes, "bytes"),
        (list, "a list"),
        (dict, "a map"),
        (type(None), "null"),
    ):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _eval_reason(err: CELEvalError) -> str:
    reason = str(err.args[0]) if err.args else type(err).__name__
    reason = reason.split(" (in activation", 1)[0]
    return reason if len(reason) <= 200 else reason[:200] + "..."


def _to_cel(value: Any) -> Any:
    """A decoded JSON value as CEL values, numbers as doubles as Go's encoding/json gives them."""
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(k): _to_cel(v) for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([_to_cel(v) for v in value])
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int | float):
        return celtypes.DoubleType(value)
    return None


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
    try:
        return _to_cel(document)
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
            return f"body matched fail_if_body_json_matches_cel {_shorten(matches.source)}"
        if not_matches is not None and not not_matches.verdict(document, stop):
            return f"body did not match fail_if_body_json_not_matches_cel {_shorten(not_matches.source)}"
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
