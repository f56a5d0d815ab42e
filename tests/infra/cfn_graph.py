"""What CloudFormation must create before a resource, hence may delete only after it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Template = dict[str, Any]


def references(value: Any) -> Iterator[str]:
    """Logical IDs a property value refers to (Ref, Fn::GetAtt), at any depth."""
    if isinstance(value, dict):
        if "Ref" in value and isinstance(value["Ref"], str):
            yield value["Ref"]
        if "Fn::GetAtt" in value:
            yield value["Fn::GetAtt"][0]
        for inner in value.values():
            yield from references(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from references(inner)


def prerequisites(template: Template, name: str) -> set[str]:
    """Everything CloudFormation must create before `name` (and may delete only after it):
    DependsOn, Ref and GetAtt, transitively."""
    resources = template["Resources"]
    seen: set[str] = set()
    stack = [name]
    while stack:
        resource = resources[stack.pop()]
        depends = resource.get("DependsOn", [])
        direct = set([depends] if isinstance(depends, str) else depends)
        direct |= set(references(resource.get("Properties", {})))
        for other in direct & resources.keys():
            if other not in seen:
                seen.add(other)
                stack.append(other)
    return seen
