"""A subset of hashicorp/go-bexpr, the ``?filter=`` language, compiled by a small parser."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_STR, _INT, _BOOL, _MAP, _STRS = "string", "int", "bool", "map", "strings"


Schema = dict[str, Any]
_MESH_GATEWAY: Schema = {"Mode": _STR}
_UPSTREAM: Schema = {
    "DestinationType": _STR,
    "DestinationNamespace": _STR,
    "DestinationPartition": _STR,
    "DestinationPeer": _STR,
    "DestinationName": _STR,
    "Datacenter": _STR,
    "LocalBindAddress": _STR,
    "LocalBindPort": _INT,
    "LocalBindSocketPath": _STR,
    "MeshGateway": _MESH_GATEWAY,
    "CentrallyConfigured": _BOOL,
}


_PROXY: Schema = {
    "DestinationServiceName": _STR,
    "DestinationServiceID": _STR,
    "LocalServiceAddress": _STR,
    "LocalServicePort": _INT,
    "LocalServiceSocketPath": _STR,
    "Mode": _STR,
    "Upstreams": [_UPSTREAM],
    "MeshGateway": _MESH_GATEWAY,
    "Expose": {"Checks": _BOOL, "Paths": [{"ListenerPort": _INT, "Path": _STR}]},
    "TransparentProxy": {"OutboundListenerPort": _INT, "DialedDirectly": _BOOL},
}


_WEIGHTS: Schema = {"Passing": _INT, "Warning": _INT}


# RaftIndex fields are `bexpr:"-"` in agent/structs: CreateIndex/ModifyIndex are not selectable.
NODE_SCHEMA: Schema = {
    "ID": _STR,
    "Node": _STR,
    "Address": _STR,
    "Datacenter": _STR,
    "TaggedAddresses": _MAP,
    "Meta": _MAP,
}


SERVICE_NODE_SCHEMA: Schema = {
    "ID": _STR,
    "Node": _STR,
    "Address": _STR,
    "Datacenter": _STR,
    "TaggedAddresses": _MAP,
    "NodeMeta": _MAP,
    "ServiceKind": _STR,
    "ServiceID": _STR,
    "ServiceName": _STR,
    "ServiceTags": _STRS,
    "ServiceAddress": _STR,
    "ServiceTaggedAddresses": _MAP,
    "ServiceWeights": _WEIGHTS,
    "ServiceMeta": _MAP,
    "ServicePort": _INT,
    "ServiceSocketPath": _STR,
    "ServiceEnableTagOverride": _BOOL,
    "ServiceProxy": _PROXY,
    "ServiceConnect": {"Native": _BOOL},
}


NODE_SERVICE_SCHEMA: Schema = {
    "Kind": _STR,
    "ID": _STR,
    "Service": _STR,
    "Tags": _STRS,
    "Address": _STR,
    "TaggedAddresses": _MAP,
    "Meta": _MAP,
    "Port": _INT,
    "SocketPath": _STR,
    "Weights": _WEIGHTS,
    "EnableTagOverride": _BOOL,
    "Proxy": _PROXY,
    "Connect": {"Native": _BOOL},
}


HEALTH_CHECK_SCHEMA: Schema = {
    "Node": _STR,
    "CheckID": _STR,
    "Name": _STR,
    "Status": _STR,
    "Notes": _STR,
    "Output": _STR,
    "ServiceID": _STR,
    "ServiceName": _STR,
    "ServiceTags": _STRS,
    "Type": _STR,
    "Interval": _STR,
    "Timeout": _STR,
    "ExposedPort": _INT,
}


CHECK_SERVICE_NODE_SCHEMA: Schema = {
    "Node": NODE_SCHEMA,
    "Service": NODE_SERVICE_SCHEMA,
    "Checks": [HEALTH_CHECK_SCHEMA],
}


Predicate = Callable[[dict[str, Any]], bool]
_MISSING = object()
_WORD_CHARS = re.compile(r"[A-Za-z0-9_\-./:]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+")


class FilterError(Exception):
    pass


@dataclass(frozen=True)
class _Selector:
    text: str
    path: tuple[str, ...]
    leaf: Any  # a scalar type name, _MAP, _STRS or a nested schema
    many: bool  # crossed a list of structs: the selector yields a list of values


def compile_filter(expression: str, schema: Schema) -> Predicate:
    """Compile a filter expression into a predicate over one result element.

    Supported (a subset of go-bexpr, the library Consul uses):
      - selectors: ``Field``, ``Field.Sub``, ``Map.key``, ``Map["any key"]``, through lists of
        structs (``Checks.Status``, ``ServiceProxy.Upstreams.DestinationName``), checked against
        the endpoint's documented fields;
      - ``S == V``, ``S != V``, ``S is empty``, ``S is not empty``, ``V in S``, ``V not in S``,
        ``S contains V``, ``S not contains V``, ``S matches "re"``, ``S not matches "re"``;
        ``in``/``contains`` test list membership, map keys, or substrings;
      - ``and``, ``or``, ``not``, parentheses; values as "double quoted", `raw`, or bare words
        (numbers, true/false, identifiers); numbers and booleans coerced to the field's type.
    A missing map key is an empty string. Anything else raises ``FilterError``.
    """
    parser = _FilterParser(expression, schema)
    return parser.parse()


class _FilterParser:
    def __init__(self, text: str, schema: Schema) -> None:
        self.text = text
        self.pos = 0
        self.schema = schema

    # -- lexical helpers
    def _fail(self, detail: str) -> FilterError:
        return FilterError(f"1:{self.pos + 1} ({self.pos}): {detail}")

    def _skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _keyword(self, word: str) -> bool:
        self._skip_ws()
        end = self.pos + len(word)
        if self.text[self.pos : end] != word:
            return False
        if end < len(self.text) and (self.text[end].isalnum() or self.text[end] == "_"):
            return False
        self.pos = end
        return True

    def _literal(self, token: str) -> bool:
        self._skip_ws()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    # -- grammar
    def parse(self) -> Predicate:
        if not self.text.strip():
            raise self._fail("no match found, expected: an expression")
        predicate = self._or()
        self._skip_ws()
        if self.pos != len(self.text):
            raise self._fail('no match found, expected: "and", "or" or end of input')
        return predicate

    def _or(self) -> Predicate:
        left = self._and()
        while self._keyword("or"):
            right = self._and()
            left = _either(left, right)
        return left

    def _and(self) -> Predicate:
        left = self._not()
        while self._keyword("and"):
            right = self._not()
            left = _both(left, right)
        return left

    def _not(self) -> Predicate:
        if self._keyword("not"):
            inner = self._not()
            return lambda item: not inner(item)
        return self._primary()

    def _primary(self) -> Predicate:
        if self._literal("("):
            inner = self._or()
            if not self._literal(")"):
                raise self._fail('no match found, expected: ")"')
            return inner
        return self._match()

    def _match(self) -> Predicate:
        self._skip_ws()
        start = self.pos
        value = self._quoted()
        if value is None:
            word = _WORD_CHARS.match(self.text, self.pos)
            if word:
                self.pos = word.end()
                if self._membership_follows():
                    value = word.group()
                else:
                    self.pos = start
        if value is not None:
            negate = self._keyword("not")
            if not self._keyword("in"):
                raise self._fail('no match found, expected: "in" or "not in"')
            return _member_test(self._selector(), value, negate=negate)
        selector = self._selector()
        return self._operator(selector)

    def _membership_follows(self) -> bool:
        save = self.pos
        found = self._keyword("in") or (self._keyword("not") and self._keyword("in"))
        self.pos = save
        return found

    def _operator(self, selector: _Selector) -> Predicate:
        if self._literal("=="):
            return _equality(selector, self._value(), negate=False)
        if self._literal("!="):
            return _equality(selector, self._value(), negate=True)
        if self._keyword("is"):
            negate = self._keyword("not")
            if not self._keyword("empty"):
                raise self._fail('no match found, expected: "empty" or "not empty"')
            return _emptiness(selector, negate=negate)
        negate = self._keyword("not")
        if self._keyword("contains"):
            return _member_test(selector, self._value(), negate=negate)
        if self._keyword("matches"):
            return _regex_test(selector, self._value(), negate=negate)
        raise self._fail(
            'no match found, expected: "!=", "==", "contains", "is", "matches" or "not"'
        )

    def _quoted(self) -> str | None:
        self._skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] not in '"`':
            return None
        quote = self.text[self.pos]
        out: list[str] = []
        index = self.pos + 1
        while index < len(self.text):
            char = self.text[index]
            if char == quote:
                self.pos = index + 1
                return "".join(out)
            if char == "\\" and quote == '"' and index + 1 < len(self.text):
                index += 1
                char = {"n": "\n", "t": "\t"}.get(self.text[index], self.text[index])
            out.append(char)
            index += 1
        raise self._fail("no match found, expected: closing quote")

    def _value(self) -> str:
        quoted = self._quoted()
        if quoted is not None:
            return quoted
        word = _WORD_CHARS.match(self.text, self.pos)
        if not word:
            raise self._fail("no match found, expected: a value")
        self.pos = word.end()
        return word.group()

    def _selector(self) -> _Selector:
        self._skip_ws()
        start = self.pos
        ident = _IDENT.match(self.text, self.pos)
        if not ident:
            raise self._fail("no match found, expected: a selector")
        path = [ident.group()]
        self.pos = ident.end()
        while self.pos < len(self.text) and self.text[self.pos] in ".[":
            if self.text[self.pos] == ".":
                segment = _SEGMENT.match(self.text, self.pos + 1)
                if not segment:
                    raise self._fail("no match found, expected: a selector field")
                path.append(segment.group())
                self.pos = segment.end()
            else:
                self.pos += 1
                key = self._quoted()
                if key is None or not self._literal("]"):
                    raise self._fail('no match found, expected: a quoted key and "]"')
                path.append(key)
        text = self.text[start : self.pos]
        leaf, many = _resolve_schema(self.schema, path, text)
        return _Selector(text=text, path=tuple(path), leaf=leaf, many=many)


def _resolve_schema(schema: Schema, path: list[str], text: str) -> tuple[Any, bool]:
    current: Any = schema
    many = False
    for position, segment in enumerate(path):
        if isinstance(current, list):
            current, many = current[0], True
        if isinstance(current, dict) and segment in current:
            current = current[segment]
        elif current == _MAP and position == len(path) - 1:
            current = _STR
        else:
            raise FilterError(f'Selector "{text}" is not valid')
    return current, many


def _select(item: dict[str, Any], selector: _Selector) -> Any:
    values: list[Any] = [item]
    for segment in selector.path:
        found: list[Any] = []
        for value in values:
            for candidate in value if isinstance(value, list) else [value]:
                if isinstance(candidate, dict) and segment in candidate:
                    found.append(candidate[segment])
        values = found
    if selector.many:
        flat: list[Any] = []
        for value in values:
            flat.extend(value if isinstance(value, list) else [value])
        return flat
    if not values:
        return "" if selector.leaf == _STR else _MISSING
    return values[0]


def _coerce(selector: _Selector, raw: str) -> object:
    if selector.leaf == _INT:
        try:
            return int(raw)
        except ValueError:
            raise FilterError(
                f'Failed to coerce value "{raw}" to the type of selector "{selector.text}": '
                "not an integer"
            ) from None
    if selector.leaf == _BOOL:
        truth = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}
        if raw.lower() not in truth:
            raise FilterError(
                f'Failed to coerce value "{raw}" to the type of selector "{selector.text}": '
                "not a boolean"
            )
        return truth[raw.lower()]
    return raw


def _either(left: Predicate, right: Predicate) -> Predicate:
    return lambda item: left(item) or right(item)


def _both(left: Predicate, right: Predicate) -> Predicate:
    return lambda item: left(item) and right(item)


def _equality(selector: _Selector, raw: str, *, negate: bool) -> Predicate:
    if selector.many or selector.leaf not in (_STR, _INT, _BOOL):
        raise FilterError(f'Selector "{selector.text}" does not support the == / != operators')
    expected = _coerce(selector, raw)

    def test(item: dict[str, Any]) -> bool:
        value = _select(item, selector)
        return bool(value == expected) != negate

    return test


def _emptiness(selector: _Selector, *, negate: bool) -> Predicate:
    def test(item: dict[str, Any]) -> bool:
        value = _select(item, selector)
        empty = value is _MISSING or value is None or value in ("", 0, False) or value == []
        empty = empty or value == {}
        return empty != negate

    return test


def _member_test(selector: _Selector, raw: str, *, negate: bool) -> Predicate:
    if not selector.many and selector.leaf not in (_STR, _MAP, _STRS):
        raise FilterError(f'Selector "{selector.text}" does not support in / contains')
    expected = _coerce(selector, raw) if selector.many else raw

    def test(item: dict[str, Any]) -> bool:
        value = _select(item, selector)
        if isinstance(value, dict | list):
            found = expected in value
        elif isinstance(value, str):
            found = str(expected) in value
        else:
            found = False
        return found != negate

    return test


def _regex_test(selector: _Selector, raw: str, *, negate: bool) -> Predicate:
    if selector.many or selector.leaf != _STR:
        raise FilterError(f'Selector "{selector.text}" does not support matches')
    try:
        pattern = re.compile(raw)
    except re.error as exc:
        raise FilterError(f"Invalid regular expression {raw!r}: {exc}") from None

    def test(item: dict[str, Any]) -> bool:
        value = _select(item, selector)
        found = isinstance(value, str) and pattern.search(value) is not None
        return found != negate

    return test
