"""Decoding JSON bodies the way Go's encoding/json fills Consul's structs, and Go durations."""

from __future__ import annotations

import copy
import re
from typing import Any

from .errors import DecodeError

JSON = Any
UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class Fields:
    """Case-insensitive view of a JSON object (Go matches struct fields with EqualFold)."""

    def __init__(self, obj: object, struct: str) -> None:
        if obj is None:
            obj = {}
        if not isinstance(obj, dict):
            raise DecodeError(
                f"json: cannot unmarshal {json_kind(obj)} into Go value of type {struct}"
            )
        self.obj: dict[str, Any] = obj
        self.struct = struct

    def get(self, name: str) -> Any:
        if name in self.obj:
            return self.obj[name]
        lowered = name.lower()
        for key, value in self.obj.items():
            if key.lower() == lowered:
                return value
        return None

    def _typed(self, name: str, kind: type, go_type: str) -> Any:
        value = self.get(name)
        if value is None:
            return None
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise DecodeError(
                f"json: cannot unmarshal {json_kind(value)} into Go struct field "
                f"{self.struct}.{name} of type {go_type}"
            )
        return value

    def string(self, name: str) -> str:
        value: str | None = self._typed(name, str, "string")
        return value or ""

    def integer(self, name: str) -> int:
        value: int | None = self._typed(name, int, "int")
        return value or 0

    def boolean(self, name: str) -> bool:
        value: bool | None = self._typed(name, bool, "bool")
        return bool(value)

    def str_list(self, name: str) -> list[str] | None:
        value: list[Any] | None = self._typed(name, list, "[]string")
        if value is not None and not all(isinstance(v, str) for v in value):
            raise DecodeError(
                f"json: cannot unmarshal array into Go struct field {self.struct}.{name} "
                "of type []string"
            )
        return None if value is None else list(value)

    def str_map(self, name: str) -> dict[str, str] | None:
        value: dict[str, Any] | None = self._typed(name, dict, "map[string]string")
        if value is not None and not all(isinstance(v, str) for v in value.values()):
            raise DecodeError(
                f"json: cannot unmarshal object into Go struct field {self.struct}.{name} "
                "of type map[string]string"
            )
        return None if value is None else dict(value)

    def sub(self, name: str, struct: str) -> Fields | None:
        value = self.get(name)
        return None if value is None else Fields(value, struct)

    def raw(self, name: str, kind: type, go_type: str) -> Any:
        return copy.deepcopy(self._typed(name, kind, go_type))


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def parse_go_duration(text: str) -> int:
    """time.ParseDuration: "1m30s" -> nanoseconds. Raises ValueError like Go's error text."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    total, pos = 0.0, 0
    while pos < len(body):
        part = _DURATION_PART.match(body, pos)
        if part is None:
            break
        total += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        pos = part.end()
    if not body or pos != len(body):
        raise ValueError(f'time: invalid duration "{text}"')
    return -int(total) if text.startswith("-") else int(total)


def go_duration(ns: int) -> str:
    """time.Duration.String: the form Consul renders check intervals in ("1m30s", "500ms")."""

    def trim(value: float) -> str:
        return f"{value:.9f}".rstrip("0").rstrip(".")

    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{trim(ns / 1e3)}\u00b5s"
    if ns < 1_000_000_000:
        return f"{sign}{trim(ns / 1e6)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if hours or minutes else ""
    return f"{sign}{text}{trim(rest / 1e9)}s"
