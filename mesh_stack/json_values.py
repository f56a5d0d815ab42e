"""JSON values of the context: objects from cdk.json or from `-c key='{...}'`. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mesh_stack.config_errors import ConfigError, fail


class _Repeated(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose names are unique: Python's json (like Node's JSON.parse, which reads
    cdk.json) keeps only the last of a repeated name, which would drop a setting unseen."""
    names: dict[str, Any] = {}
    for name, value in pairs:
        if name in names:
            raise _Repeated(name)
        names[name] = value
    return names


def json_object(key: str, value: object) -> Mapping[str, Any]:
    """A JSON object from cdk.json, or from `-c key='{...}'` on the command line."""
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value, object_pairs_hook=_unique) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise fail(key, value, f"is not a JSON object ({err.msg})") from None
        except _Repeated as err:
            # the name only: the rest of the value may hold an environment value
            raise ConfigError(
                f"invalid context value {key}: the name {err.name!r} appears twice in one JSON "
                "object, where only the last would count; give it once"
            ) from None
    if not isinstance(parsed, Mapping):
        raise fail(key, value, "must be a JSON object")
    return parsed
