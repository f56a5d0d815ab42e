"""Cross-check the report's ingress table against the templates, computed independently.

`rows_from_templates` walks the raw template JSON with none of the review's resolution code;
`rows_from_report` parses the table back out of REVIEW.md. A test asserts they are equal,
so a rule the review drops, invents or misreads fails the build. A row is
(stack, security group, protocol, ports, source), where a group or source is the logical id
it resolves to, a source CIDR is the literal, and `?` is a source neither side resolves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Row = tuple[str, str, str, str, str]
_PROTOCOLS = {"-1": "all", "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}
_CODE = re.compile(r"`([^`]*)`")


def _ports(protocol: str, low: Any, high: Any) -> str:
    if protocol == "all" or low is None:
        return "all"
    low, high = int(low), int(high if high is not None else low)
    if protocol.startswith("icmp"):
        return "all" if low == -1 else f"type {low}" + (f" code {high}" if high != -1 else "")
    if low == -1 or (low, high) == (0, 65535):
        return "all"
    return f"{low}" if low == high else f"{low}-{high}"


class _Templates:
    def __init__(self, templates: Mapping[str, Mapping[str, Any]]) -> None:
        self.templates = templates
        self.exports = {
            output["Export"]["Name"]: (name, output["Value"])
            for name, template in templates.items()
            for output in (template.get("Outputs") or {}).values()
            if isinstance((output.get("Export") or {}).get("Name"), str)
        }

    def follow(self, stack: str, value: Any) -> tuple[str, Any]:
        while isinstance(value, dict):
            if "Fn::ImportValue" in value and value["Fn::ImportValue"] in self.exports:
                stack, value = self.exports[value["Fn::ImportValue"]]
            elif "Fn::GetStackOutput" in value:
                spec = value["Fn::GetStackOutput"]
                outputs = self.templates.get(spec["StackName"], {}).get("Outputs") or {}
                if spec["OutputName"] not in outputs:
                    break
                stack, value = spec["StackName"], outputs[spec["OutputName"]]["Value"]
            elif "Fn::Select" in value:
                value = value["Fn::Select"][1]
            else:
                break
        return stack, value

    def resource(self, stack: str, logical_id: Any) -> Mapping[str, Any] | None:
        resources = self.templates[stack].get("Resources") or {}
        found = resources.get(logical_id) if isinstance(logical_id, str) else None
        return found if isinstance(found, Mapping) else None

    def group(self, stack: str, value: Any) -> str:
        """A group (or prefix list): the logical id it names, or the literal id."""
        stack, value = self.follow(stack, value)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and self.resource(stack, value.get("Ref")) is not None:
            return str(value["Ref"])
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            logical_id = value["Fn::GetAtt"][0]
            if self.resource(stack, logical_id) is not None:
                return str(logical_id)
        return "?"

    def cidr(self, stack: str, value: Any) -> str:
        """A literal CIDR, or the VPC's own block as `Vpc.Attribute` (its literal if known)."""
        stack, value = self.follow(stack, value)
        if isinstance(value, str):
            return value
        if not (isinstance(value, dict) and "Fn::GetAtt" in value):
            return "?"
        logical_id, attribute = value["Fn::GetAtt"]
        resource = self.resource(stack, logical_id) or {}
        if resource.get("Type") not in ("AWS::EC2::VPC", "AWS::EC2::VPCCidrBlock"):
            return "?"
        if attribute not in (
            "CidrBlock",
            "Ipv6CidrBlocks",
            "Ipv6CidrBlock",
            "CidrBlockAssociations",
        ):
            return "?"
        literal = (resource.get("Properties") or {}).get("CidrBlock")
        if (
            resource["Type"] == "AWS::EC2::VPC"
            and attribute == "CidrBlock"
            and isinstance(literal, str)
        ):
            return literal
        return f"{logical_id}.{attribute}"

    def row(self, stack: str, group: str, rule: Mapping[str, Any]) -> Row:
        protocol = str(rule.get("IpProtocol", "-1")).lower()
        protocol = _PROTOCOLS.get(protocol, protocol)
        ports = _ports(protocol, rule.get("FromPort"), rule.get("ToPort"))
        source = "?"
        for key in ("CidrIp", "CidrIpv6"):
            if key in rule:
                return (stack, group, protocol, ports, self.cidr(stack, rule[key]))
        for key in ("SourceSecurityGroupId", "SourceSecurityGroupName", "SourcePrefixListId"):
            if key in rule:
                source = self.group(stack, rule[key])
                break
        return (stack, group, protocol, ports, source)


def rows_from_templates(templates: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    """Every ingress rule of `{stack name: template}`, sorted."""
    walker = _Templates(templates)
    rows: list[Row] = []
    for stack, template in templates.items():
        for logical_id, resource in (template.get("Resources") or {}).items():
            props = resource.get("Properties") or {}
            if resource.get("Type") == "AWS::EC2::SecurityGroup":
                for rule in props.get("SecurityGroupIngress") or []:
                    rows.append(walker.row(stack, logical_id, rule))
            elif resource.get("Type") == "AWS::EC2::SecurityGroupIngress":
                group = walker.group(stack, props.get("GroupId", props.get("GroupName")))
                rows.append(walker.row(stack, group, props))
    return sorted(rows)


def _split(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def rows_from_report(markdown: str, heading: str = "### Security group ingress rules") -> list[Row]:
    """The ingress table of a REVIEW.md, as rows comparable with `rows_from_templates`."""
    lines = markdown.splitlines()
    if heading not in lines:
        raise ValueError(f"no {heading!r} section in the report")
    start = lines.index(heading) + 1
    body: list[str] = []
    for line in lines[start:]:
        if line.startswith("|"):
            body.append(line)
        elif body or line.startswith("#"):
            break
    if not body:
        return []
    header = _split(body[0])
    rows: list[Row] = []
    for line in body[2:]:
        cells = dict(zip(header, _split(line), strict=True))
        rows.append(
            (
                cells["Stack"],
                _key(cells["Security group"]),
                cells["Protocol"],
                cells["Ports"],
                _key(cells["Source"]),
            )
        )
    return sorted(rows)


def _key(text: str) -> str:
    """The first code span of a cell; `?` for a value the review marked unresolved."""
    found = _CODE.search(text)
    return "?" if found is None or text.startswith("unresolved") else found.group(1)
