"""Resolve CloudFormation references to the resources they name, across stacks.

A security group rule, a policy resource or a queue's key is almost always an intrinsic
(`Ref`, `Fn::GetAtt`) and, between stacks, an `Fn::ImportValue` (CDK strong references) or an
`Fn::GetStackOutput` (weak references): the reviewer wants the resource and its construct
path, not the intrinsic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from tools.review.load import Assembly, Json, StackTemplate


@dataclass(frozen=True)
class Target:
    """The resource an intrinsic points at."""

    stack: StackTemplate
    logical_id: str
    attribute: str | None  # None for Ref

    @property
    def type(self) -> str:
        return self.stack.type_of(self.logical_id)

    @property
    def properties(self) -> dict[str, Json]:
        return self.stack.properties(self.logical_id)

    @property
    def path(self) -> str:
        return self.stack.path_of(self.logical_id)

    def label(self, home: StackTemplate | None = None, *, attribute: bool = False) -> str:
        """`LogicalId` (path), naming the stack when it is not `home`'s."""
        name = self.logical_id
        if attribute and self.attribute:
            name = f"{name}.{self.attribute}"
        label = f"`{name}` ({self.path})" if self.path else f"`{name}`"
        return label if home is None or home is self.stack else f"{label} in {self.stack.name}"


def flatten(value: Json) -> str:
    """A reference as cdk-nag spells it in finding ids, e.g. `arn:<AWS::Partition>:s3:::<B.Arn>`.

    Mirrors cdk-nag 3.0.2 `flattenCfnReference`, so an IAM5 finding id computed here is the
    id an acknowledgement must name (`AwsSolutions-IAM5[Resource::<Bucket.Arn>/*]`).
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("${", "<").replace("}", ">")
    if not isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if value.get("Fn::Join"):
        delimiter, items = value["Fn::Join"]
        text = str(delimiter).join(flatten(item) for item in items)
    elif value.get("Fn::Sub"):
        text = flatten(value["Fn::Sub"])
    elif value.get("Fn::GetAtt"):
        resource, attribute = _getatt(value["Fn::GetAtt"])
        text = f"<{flatten(resource)}.{flatten(attribute)}>"
    elif value.get("Fn::ImportValue"):
        text = flatten(value["Fn::ImportValue"])
    elif value.get("Ref"):
        text = f"<{flatten(value['Ref'])}>"
    else:
        text = json.dumps(value, separators=(",", ":"))
    return text


def _getatt(arg: Json) -> tuple[str, str]:
    if isinstance(arg, str):
        resource, _, attribute = arg.partition(".")
        return resource, attribute
    return str(arg[0]), str(arg[1])


def intrinsic_targets(value: Json) -> Iterator[tuple[str, str | None]]:
    """Every (logical id, attribute) a value refers to with Ref/GetAtt, at any depth."""
    if isinstance(value, dict):
        if isinstance(value.get("Ref"), str):
            yield value["Ref"], None
        elif "Fn::GetAtt" in value:
            resource, attribute = _getatt(value["Fn::GetAtt"])
            yield resource, attribute
        else:
            for item in value.values():
                yield from intrinsic_targets(item)
    elif isinstance(value, list):
        for item in value:
            yield from intrinsic_targets(item)


class Resolver:
    """Follows Ref/GetAtt inside a stack and ImportValue/GetStackOutput between stacks."""

    def __init__(self, assembly: Assembly) -> None:
        self.assembly = assembly
        self._exports: dict[str, tuple[StackTemplate, Json]] = {}
        for stack in assembly.stacks:
            for output in (stack.template.get("Outputs") or {}).values():
                name = (output.get("Export") or {}).get("Name")
                if isinstance(name, str):
                    self._exports[name] = (stack, output.get("Value"))

    def producer(self, stack: StackTemplate, value: Json) -> tuple[StackTemplate, Json]:
        """The stack and value an import stands for; other values are returned unchanged."""
        for _ in range(10):  # an export of an import of an export... is bounded in practice
            if not isinstance(value, dict) or len(value) != 1:
                break
            if isinstance(value.get("Fn::ImportValue"), str):
                found = self._exports.get(value["Fn::ImportValue"])
                if found is None:
                    break
                stack, value = found
            elif isinstance(value.get("Fn::GetStackOutput"), dict):
                spec = value["Fn::GetStackOutput"]
                producer = self.assembly.stack_named(str(spec.get("StackName")))
                outputs = (producer.template.get("Outputs") or {}) if producer else {}
                output = outputs.get(str(spec.get("OutputName")))
                if producer is None or output is None:
                    break
                stack, value = producer, output.get("Value")
            else:
                break
        return stack, value

    def target(self, stack: StackTemplate, value: Json) -> Target | None:
        """The resource a Ref/GetAtt (possibly through an import) names, if it is in a template."""
        stack, value = self.producer(stack, value)
        if not isinstance(value, dict) or len(value) != 1:
            return None
        if isinstance(value.get("Ref"), str) and value["Ref"] in stack.resources:
            return Target(stack, value["Ref"], None)
        if "Fn::GetAtt" in value:
            resource, attribute = _getatt(value["Fn::GetAtt"])
            if resource in stack.resources:
                return Target(stack, resource, attribute)
        return None

    def describe(self, stack: StackTemplate, value: Json) -> str:
        """Markdown for any value: a resource label, a literal, or the flattened intrinsic."""
        found = self.target(stack, value)
        if found is not None:
            return found.label(stack, attribute=True)
        _, value = self.producer(stack, value)
        return f"`{flatten(value)}`"

    def refers_to(self, stack: StackTemplate, value: Json, target: Target) -> bool:
        """True when `value` (evaluated in `stack`) mentions `target` anywhere inside it."""
        stack, value = self.producer(stack, value)
        if stack is target.stack and any(
            logical_id == target.logical_id for logical_id, _ in intrinsic_targets(value)
        ):
            return True
        return any(self.refers_to(stack, item, target) for item in _imports(value))


def _imports(value: Json) -> Iterator[Json]:
    if isinstance(value, dict):
        if "Fn::ImportValue" in value or "Fn::GetStackOutput" in value:
            yield value
        else:
            for item in value.values():
                yield from _imports(item)
    elif isinstance(value, list):
        for item in value:
            yield from _imports(item)
