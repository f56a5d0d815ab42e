"""JSON values of the context: objects from cdk.json or from `-c key='{...}'`. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mesh_stack.config_errors import fail


def json_object(key: str, value: object) -> Mapping[str, Any]:
    """A JSON object from cdk.json, or from `-c key='{...}'` on the command line."""
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise fail(key, value, f"is not a JSON object ({err.msg})") from None
    if not isinstance(parsed, Mapping):
        raise fail(key, value, "must be a JSON object")
    return parsed
