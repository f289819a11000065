"""Reads YAML nodes into frozen dataclasses, reporting every problem with its path and line."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import yaml

from exporter.errors import ConfigIssue

_INVALID: Any = object()
# libyaml's loader reads large service lists an order of magnitude faster, with the same marks.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BINARY_TAG = "tag:yaml.org,2002:binary"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# Go's yaml fills a string field from any plain scalar, as written: ``X-Num: 5`` is "5".
_GO_STRING_TAGS = (_STR_TAG, _INT_TAG, _FLOAT_TAG, _BOOL_TAG)
_MERGE_TAG = "tag:yaml.org,2002:merge"


def yaml_key(field: dataclasses.Field[Any]) -> str:
    """The YAML key of a dataclass field (``global_`` is written ``global``)."""
    return str(field.metadata.get("key", field.name.rstrip("_")))


def line_of(node: yaml.Node | None) -> int | None:
    return None if node is None else node.start_mark.line + 1


def compose(text: str, file: str | None) -> tuple[yaml.Node | None, list[ConfigIssue]]:
    """Parse YAML text into a node tree, or say where the syntax is wrong."""
    try:
        return yaml.compose(text, Loader=_LOADER), []
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(p for p in (err.context, err.problem) if p)
        return None, [ConfigIssue("", line, f"invalid YAML: {what}", file)]
    except yaml.reader.ReaderError as err:
        # A character YAML forbids (a control character): its position still gives the line.
        line = text.count("\n", 0, err.position) + 1
        what = f"unacceptable character #x{err.character:04x}: {err.reason}"
        return None, [ConfigIssue("", line, f"invalid YAML: {what}", file)]
    except yaml.YAMLError as err:
        return None, [ConfigIssue("", None, f"invalid YAML: {err}", file)]


def mapping_items(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """Key/value pairs of a mapping with ``<<`` merge keys flattened.

    As YAML's merge says, a mapping's own keys win, then those of earlier sources. Each source
    is flattened once, so a merge cycle (``&a {<<: *a}``) or a source merged through many
    aliases (a "billion laughs" of merge keys) costs no more than the mappings written.
    """
    items, sources = _own_and_merged(node)
    taken = {k.value for k, _ in items if isinstance(k, yaml.ScalarNode)}
    seen = {id(node)}
    pending = sources[::-1]
    while pending:
        source = pending.pop()
        if id(source) in seen:
            continue
        seen.add(id(source))
        own, more = _own_and_merged(source)
        for key, value in own:
            if not isinstance(key, yaml.ScalarNode):
                items.append((key, value))  # not a valid key anywhere: the reader reports it
            elif key.value not in taken:
                taken.add(key.value)
                items.append((key, value))
        pending.extend(more[::-1])
    return items


def _own_and_merged(
    node: yaml.MappingNode,
) -> tuple[list[tuple[yaml.Node, yaml.Node]], list[yaml.MappingNode]]:
    """A mapping's own key/value pairs, and the mappings its ``<<`` keys merge in, in order."""
    own: list[tuple[yaml.Node, yaml.Node]] = []
    sources: list[yaml.MappingNode] = []
    for key, value in node.value:
        if key.tag == _MERGE_TAG:
            candidates = value.value if isinstance(value, yaml.SequenceNode) else [value]
            sources.extend(c for c in candidates if isinstance(c, yaml.MappingNode))
        else:
            own.append((key, value))
    return own, sources


class Reader:
    """Turns nodes into typed values, collecting issues instead of stopping at the first."""

    def __init__(self, file: str | None = None) -> None:
        self.file = file
        self.issues: list[ConfigIssue] = []

    def error(self, path: str, node: yaml.Node | None, message: str) -> None:
        self.issues.append(ConfigIssue(path, line_of(node), message, self.file))

    def read(self, tp: Any, node: yaml.Node, path: str) -> Any:
        """Read ``node`` as type ``tp``; on a problem, record it and return an invalid marker."""
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            if node.tag == _NULL_TAG:
                return None
            return self.read(inner[0], node, path)
        if origin is Literal:
            value = self._scalar(node, path, "a string")
            if value is _INVALID:
                return _INVALID
            if value not in args:
                choices = ", ".join(repr(a) for a in args if a != "")
                self.error(path, node, f"must be one of {choices}, got {value!r}")
                return _INVALID
            return value
        if origin is tuple:
            return self._sequence(args[0], node, path)
        if origin in (dict, Mapping) or tp is Mapping:
            return self._mapping(args[1], node, path)
        if getattr(tp, "yaml_string_or_list", False):
            # One string or a list of them (gRPC metadata: one key, several values).
            items = node.value if isinstance(node, yaml.SequenceNode) else [node]
            values = [self.read(tp.item_type, item, path) for item in items]
            return _INVALID if any(v is _INVALID for v in values) else tp(values)
        if hasattr(tp, "from_yaml"):
            if getattr(tp, "yaml_string", False):
                value = self._go_string(node, path)
            else:
                value = self._scalar(node, path, "a scalar")
            if value is _INVALID:
                return _INVALID
            try:
                return tp.from_yaml(value)
            except ValueError as err:
                self.error(path, node, str(err))
                return _INVALID
        if dataclasses.is_dataclass(tp):
            return self.read_dataclass(tp, node, path)
        if tp is bool:
            return self._typed(node, path, (_BOOL_TAG,), "true or false")
        if tp is int:
            return self._typed(node, path, (_INT_TAG,), "an integer")
        if tp is float:
            value = self._typed(node, path, (_INT_TAG, _FLOAT_TAG), "a number")
            return _INVALID if value is _INVALID else float(value)
        if tp is str:
            return self._go_string(node, path)
        if tp is object:
            return self._any(node, path)
        raise TypeError(f"no reader for type {tp!r}")  # a programming error, not a config one

    def read_dataclass(self, cls: Any, node: yaml.Node, path: str) -> Any:
        hints, fields = _schema(cls)
        if node.tag == _NULL_TAG:
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            self.error(path, node, f"must be a mapping, got {describe(node)}")
            return _INVALID
        values: dict[str, Any] = {}
        key_nodes: dict[str, yaml.Node] = {}
        ok = True
        for key_node, value_node in mapping_items(node):
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            sub = join(path, str(key))
            if not isinstance(key, str) or key not in fields:
                hint = difflib.get_close_matches(str(key), list(fields), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                # Reported, and the rest of the mapping still read and checked, so one stray key
                # does not hide the other errors (the load fails on any reported error anyway).
                self.error(sub, key_node, f"unknown key{extra}")
                continue
            if key in key_nodes:
                self.error(sub, key_node, f"duplicate key (first set on line {line_of(key_nodes[key])})")
                continue
            key_nodes[key] = key_node
            value = self.read(hints[fields[key].name], value_node, sub)
            if value is _INVALID:
                ok = False
            else:
                values[fields[key].name] = value
        for key, f in fields.items():
            missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if missing and f.name not in values and key not in key_nodes:
                self.error(join(path, key), node, "is required")
                ok = False
        if not ok:
            return _INVALID
        obj = cls(**values)
        check: Callable[[], Any] | None = getattr(obj, "check", None)
        if check is not None:
            for key, message in check():
                self.error(join(path, key), find_node(node, key) or node, message)
        return obj

    def _sequence(self, item_type: Any, node: yaml.Node, path: str) -> Any:
        if node.tag == _NULL_TAG:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            # A secret's value stays out of the message, even when it is in the wrong shape.
            got = f"a {_kind(node)}" if getattr(item_type, "yaml_secret", False) else describe(node)
            self.error(path, node, f"must be a list, got {got}")
            return _INVALID
        items = [self.read(item_type, item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return _INVALID if any(i is _INVALID for i in items) else tuple(items)

    def _mapping(self, value_type: Any, node: yaml.Node, path: str) -> Any:
        if node.tag == _NULL_TAG:
            return MappingProxyType({})
        if not isinstance(node, yaml.MappingNode):
            self.error(path, node, f"must be a mapping, got {describe(node)}")
            return _INVALID
        out: dict[str, Any] = {}
        ok = True
        for key_node, value_node in mapping_items(node):
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(path, key_node, "keys must be strings")
                ok = False
                continue
            sub = join(path, key_node.value)
            if key_node.value in out:
                self.error(sub, key_node, "duplicate key")
                ok = False
                continue
            value = self.read(value_type, value_node, sub)
            if value is _INVALID:
                ok = False
            else:
                out[key_node.value] = value
        return MappingProxyType(out) if ok else _INVALID

    def _any(self, node: yaml.Node, path: str) -> Any:
        """Any YAML value as Go's yaml decodes one into ``any``: a date stays the string written.

        Mappings come back read-only, sequences as tuples.
        """
        if isinstance(node, yaml.MappingNode):
            return self._mapping(object, node, path)
        if isinstance(node, yaml.SequenceNode):
            return self._sequence(object, node, path)
        if node.tag == _NULL_TAG:
            return None
        if node.tag == _TIMESTAMP_TAG:
            return str(node.value)
        if node.tag == _BINARY_TAG:
            return self._go_string(node, path)
        assert isinstance(node, yaml.ScalarNode)
        return self._construct(node, path, "a value")

    def _go_string(self, node: yaml.Node, path: str) -> Any:
        """A string as Go's yaml reads one: any plain scalar as written; ``!!binary`` decoded.

        Decoded bytes that are not UTF-8 are kept as surrogates, so a ``send`` gives back the
        very bytes written.
        """
        if isinstance(node, yaml.ScalarNode) and node.tag in _GO_STRING_TAGS:
            return str(node.value)
        if isinstance(node, yaml.ScalarNode) and node.tag == _BINARY_TAG:
            try:
                return base64.b64decode("".join(node.value.split()), validate=True).decode(
                    "utf-8", "surrogateescape"
                )
            except (binascii.Error, ValueError):
                self.error(path, node, f"must be base64 after !!binary, got {_shorten(node.value)!r}")
                return _INVALID
        self.error(path, node, f"must be a string, got {describe(node)}")
        return _INVALID

    def _scalar(self, node: yaml.Node, path: str, expected: str) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL_TAG:
            self.error(path, node, f"must be {expected}, got {describe(node)}")
            return _INVALID
        return self._construct(node, path, expected)

    def _typed(self, node: yaml.Node, path: str, tags: tuple[str, ...], expected: str) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag in tags:
            return self._construct(node, path, expected)
        self.error(path, node, f"must be {expected}, got {describe(node)}")
        return _INVALID

    def _construct(self, node: yaml.ScalarNode, path: str, expected: str) -> Any:
        try:
            return _construct(node)
        except (ValueError, OverflowError, yaml.YAMLError):
            # An integer of thousands of digits, a date like 2001-13-45, invalid !!binary.
            self.error(path, node, f"must be {expected}, got {_shorten(node.value)!r}, which cannot be read")
            return _INVALID


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """Type hints and fields by YAML key of a dataclass; computed once per class."""
    return typing.get_type_hints(cls), {yaml_key(f): f for f in dataclasses.fields(cls)}


def _construct(node: yaml.ScalarNode) -> Any:
    """A scalar's Python value by YAML's own rules (ints, floats, booleans, dates)."""
    try:
        return _CONSTRUCTOR.construct_object(node)
    finally:
        # The constructor remembers every node it built; left alone it would keep every
        # config ever loaded alive, which grew a reloading exporter by megabytes a minute.
        _CONSTRUCTOR.constructed_objects.clear()
        _CONSTRUCTOR.recursive_objects.clear()


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _kind(node: yaml.Node) -> str:
    """What a node is, without its value: ``string``, ``mapping``..."""
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "string" if node.tag.endswith(":str") else "scalar"


def describe(node: yaml.Node) -> str:
    """How a node looks to a user, for 'expected X, got Y' messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "nothing"
    kind = {_BOOL_TAG: "boolean", _INT_TAG: "integer", _FLOAT_TAG: "number"}.get(node.tag, "string")
    return f"{kind} {_shorten(node.value)!r}"


def _shorten(text: str, limit: int = 80) -> str:
    """A value quoted in a message: long ones are cut so one line stays readable."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def find_node(node: yaml.Node | None, dotted: str) -> yaml.Node | None:
    """The node at a dotted key path below a mapping (``basic_auth.password``, ``names[2]``), if present."""
    current: yaml.Node | None = node
    for part in dotted.split("."):
        key, _, index = part.partition("[")
        if not isinstance(current, yaml.MappingNode):
            return None
        current = next(
            (v for k, v in mapping_items(current) if isinstance(k, yaml.ScalarNode) and k.value == key),
            None,
        )
        if index:
            position = index.rstrip("]")
            if not isinstance(current, yaml.SequenceNode) or not position.isdigit():
                return None
            items = current.value
            current = items[int(position)] if int(position) < len(items) else None
    return current


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def is_invalid(value: Any) -> bool:
    return value is _INVALID
