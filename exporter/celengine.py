"""cel-python behind exporter.cel: compiling and evaluating, imported with a config's first CEL expression."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, Evaluator, bool_eq

from exporter.cel import CELProblem, shorten

# Macros that bind their first argument as a variable for the rest.
_MACROS = frozenset({"exists", "all", "exists_one", "map", "filter"})
_VARIABLE = "body"
# Names CEL itself declares: the type values (``type(x) == int``) and the protobuf wrappers.
_BUILTIN_NAMES = frozenset(
    {"bool", "bytes", "double", "duration", "dyn", "int", "list", "map", "null_type", "string"}
    | {"timestamp", "type", "uint", "google"}
)
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


def compile_program(value: str) -> Any:
    """``value`` compiled for ``body``; ValueError saying why not."""
    try:
        tree = _ENVIRONMENT.compile(value)
    except CELParseError as err:
        line, column = getattr(err, "line", None), getattr(err, "column", None)
        where = f" at line {line}, column {column}" if line and column else ""
        raise ValueError(f"cannot compile CEL expression {shorten(value)}: syntax error{where}") from None
    except (lark.exceptions.LarkError, RecursionError) as err:
        reason = type(err).__name__
        raise ValueError(f"cannot compile CEL expression {shorten(value)}: {reason}") from None
    undeclared = sorted(set(_free_names(tree, _BUILTIN_NAMES | {_VARIABLE})))
    if undeclared:
        raise ValueError(
            f"cannot compile CEL expression {shorten(value)}: undeclared reference to "
            f"{', '.join(repr(n) for n in undeclared)} (the only variable is {_VARIABLE!r})"
        )
    return _ENVIRONMENT.program(tree, functions=_FUNCTIONS)


def verdict(program: Any, source: str, document: Any, stop: threading.Event | None) -> bool:
    """``program``'s value on ``document``; CELProblem if it is not a bool (see CELProgram.verdict)."""
    evaluator = _StoppableEvaluator(program.ast, program.new_activation(), stop or threading.Event(), [0])
    try:
        result = evaluator.evaluate({_VARIABLE: document})
    except _Stopped:
        raise CELProblem(f"evaluating {shorten(source)} was stopped: the probe ended") from None
    except CELEvalError as err:
        raise CELProblem(f"evaluating {shorten(source)} failed: {_eval_reason(err)}") from None
    except (RecursionError, ArithmeticError, TypeError, ValueError, KeyError, IndexError) as err:
        raise CELProblem(f"evaluating {shorten(source)} failed: {type(err).__name__}") from None
    if isinstance(result, CELEvalError):
        raise CELProblem(f"evaluating {shorten(source)} failed: {_eval_reason(result)}")
    if not isinstance(result, celtypes.BoolType):
        raise CELProblem(f"{shorten(source)} gave {_type_name(result)}, not a boolean")
    return bool(result)


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


def to_cel(value: Any) -> Any:
    """A decoded JSON value as CEL values, numbers as doubles as Go's encoding/json gives them."""
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(k): to_cel(v) for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v) for v in value])
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int | float):
        return celtypes.DoubleType(value)
    return None
