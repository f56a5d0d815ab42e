"""Resolve CloudFormation references to the resources they name, across stacks.

A security group rule, a policy resource or a queue's key is almost always an intrinsic
(`Ref`, `Fn::GetAtt`) and, between stacks, an `Fn::ImportValue` (CDK strong references) or an
`Fn::GetStackOutput` (weak references): the reviewer wants the resource and its construct
path, not the intrinsic.

Custom resources: `Fn::GetAtt [<custom resource>, Attr]` is whatever the provider returned
in `Data`. When the custom resource has an input property of the same name, the review
follows that property (the provider echoes it; e.g. the Consul token resources return their
`TokenSecretArn` input, lambda/consul_config/operations.py) and says so in `via`. A custom
attribute without such a property, a template parameter or an import nobody exports is
*unresolved*: `Resolver.mentions` lists it, so a section can say "unresolved", never "none".
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tools.review.load import Assembly, Json, StackTemplate
from tools.review.model import Res

CUSTOM_RESOURCE = "AWS::CloudFormation::CustomResource"


def is_custom(kind: str) -> bool:
    return kind.startswith("Custom::") or kind == CUSTOM_RESOURCE


@dataclass(frozen=True)
class Target:
    """The resource an intrinsic points at."""

    stack: StackTemplate
    logical_id: str
    attribute: str | None  # None for Ref
    via: tuple[str, ...] = ()  # `Logical.Attr` of each custom resource output followed

    @property
    def res(self) -> Res:
        return Res(self.stack.name, self.logical_id, self.path, self.type)

    def same(self, other: Target) -> bool:
        return self.stack is other.stack and self.logical_id == other.logical_id

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


@dataclass
class Mentions:
    """Every resource a value names, at any depth, and every part the review cannot resolve."""

    targets: list[Target]
    unresolved: list[str]  # plain descriptions, e.g. "custom resource output X.Y (...)"


_PSEUDO = "AWS::"


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

    def _echo(self, stack: StackTemplate, resource: str, attribute: str) -> Json | None:
        """The input property a custom resource's output of the same name echoes, if any."""
        if is_custom(stack.type_of(resource)):
            props = stack.properties(resource)
            if attribute in props:
                return props[attribute]
        return None

    def target(self, stack: StackTemplate, value: Json) -> Target | None:
        """The resource a Ref/GetAtt (through imports and echoing custom resource outputs)
        names, if it is in a template."""
        via: list[str] = []
        for _ in range(10):
            stack, value = self.producer(stack, value)
            if not isinstance(value, dict) or len(value) != 1:
                return None
            if isinstance(value.get("Ref"), str) and value["Ref"] in stack.resources:
                return Target(stack, value["Ref"], None, tuple(via))
            if "Fn::GetAtt" not in value:
                return None
            resource, attribute = _getatt(value["Fn::GetAtt"])
            if resource not in stack.resources:
                return None
            echoed = self._echo(stack, resource, attribute)
            if echoed is None:
                return Target(stack, resource, attribute, tuple(via))
            via.append(f"{resource}.{attribute}")
            value = echoed
        return None

    def mentions(self, stack: StackTemplate, value: Json) -> Mentions:
        """Every resource `value` names (through imports and custom resource echoes)."""
        found = Mentions([], [])
        self._mentions(stack, value, (), found, 0)
        return found

    def _mentions(
        self, stack: StackTemplate, value: Json, via: tuple[str, ...], found: Mentions, depth: int
    ) -> None:
        if depth > 10:
            found.unresolved.append(f"reference chain too deep at {flatten(value)}")
        elif isinstance(value, list):
            for item in value:
                self._mentions(stack, item, via, found, depth)
        elif not isinstance(value, dict):
            return
        elif "Fn::ImportValue" in value or "Fn::GetStackOutput" in value:
            producer, produced = self.producer(stack, value)
            if produced is value:
                found.unresolved.append(f"import nobody exports: {flatten(value)}")
            else:
                self._mentions(producer, produced, via, found, depth + 1)
        elif isinstance(value.get("Ref"), str):
            self._mention_ref(stack, value["Ref"], via, found)
        elif "Fn::GetAtt" in value:
            self._mention_getatt(stack, value["Fn::GetAtt"], via, found, depth)
        else:
            for item in value.values():
                self._mentions(stack, item, via, found, depth)

    @staticmethod
    def _mention_ref(
        stack: StackTemplate, name: str, via: tuple[str, ...], found: Mentions
    ) -> None:
        if name in stack.resources:
            found.targets.append(Target(stack, name, None, via))
        elif name in (stack.template.get("Parameters") or {}):
            found.unresolved.append(f"template parameter {name} of {stack.name}")
        elif not name.startswith(_PSEUDO):
            found.unresolved.append(f"Ref {name}: no such resource in {stack.name}")

    def _mention_getatt(
        self, stack: StackTemplate, arg: Json, via: tuple[str, ...], found: Mentions, depth: int
    ) -> None:
        resource, attribute = _getatt(arg)
        echoed = self._echo(stack, resource, attribute)
        if resource not in stack.resources:
            found.unresolved.append(f"{resource}.{attribute}: no such resource in {stack.name}")
        elif echoed is not None:
            self._mentions(stack, echoed, (*via, f"{resource}.{attribute}"), found, depth + 1)
        elif is_custom(stack.type_of(resource)):
            found.unresolved.append(
                f"custom resource output {resource}.{attribute} "
                "(not one of its input properties: only its provider knows the value)"
            )
        else:
            found.targets.append(Target(stack, resource, attribute, via))

    def describe(self, stack: StackTemplate, value: Json) -> str:
        """Markdown for any value: a resource label, a literal, or the flattened intrinsic."""
        found = self.target(stack, value)
        if found is not None:
            return found.label(stack, attribute=True)
        _, value = self.producer(stack, value)
        return f"`{flatten(value)}`"

    def refers_to(self, stack: StackTemplate, value: Json, target: Target) -> bool:
        """True when `value` (evaluated in `stack`) mentions `target` anywhere inside it."""
        return any(found.same(target) for found in self.mentions(stack, value).targets)

    def naming(self, stack: StackTemplate, value: Json, target: Target) -> Target | None:
        """The mention of `target` inside `value` (with the custom resources it went through)."""
        return next((t for t in self.mentions(stack, value).targets if t.same(target)), None)
