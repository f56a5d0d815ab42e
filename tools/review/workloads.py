"""What runs where: the workloads behind each security group, and those that run as each role.

A resource is *behind* a security group when any of its properties names the group (a load
balancer, a launch template, a function's `VpcConfig`). It *runs as* a role when a property
whose name says so names the role: `Role`, `RoleArn`, `ExecutionRoleArn`, `TaskRoleArn`, an
instance profile's `Roles`, a launch template's `IamInstanceProfile`. A policy names roles too,
but it attaches to them; it does not run as them.

Launch templates fold into the Auto Scaling groups that launch them, and instance profiles into
what uses them, so a workload is the fleet a reviewer knows (the servers' ASG), not the plumbing
between it and the role or group.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tools.review.load import Assembly, Json, StackTemplate
from tools.review.model import Res
from tools.review.network import EGRESS, INGRESS, SECURITY_GROUP
from tools.review.refs import Resolver, Target

ROLE = "AWS::IAM::Role"
INSTANCE_PROFILE = "AWS::IAM::InstanceProfile"
LAUNCH_TEMPLATE = "AWS::EC2::LaunchTemplate"
AUTO_SCALING_GROUP = "AWS::AutoScaling::AutoScalingGroup"
_RUNS_AS_KEY = re.compile(r"(Role|RoleArn|Roles|IamInstanceProfile)$")
_ATTACHES_ONLY = {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", ROLE}
_RULES = {SECURITY_GROUP, INGRESS, EGRESS}


def launched_by(assembly: Assembly, resolver: Resolver) -> dict[Res, list[Res]]:
    """Launch template -> the Auto Scaling groups that launch it."""
    found: dict[Res, list[Res]] = {}
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(AUTO_SCALING_GROUP):
            props = resource.get("Properties") or {}
            template = resolver.target(
                stack, (props.get("LaunchTemplate") or {}).get("LaunchTemplateId")
            )
            if template is not None:
                found.setdefault(template.res, []).append(stack.res(logical_id))
    return found


def _fold(res: Res, launched: dict[Res, list[Res]]) -> list[Res]:
    return launched.get(res, [res]) if res.type == LAUNCH_TEMPLATE else [res]


def behind_groups(assembly: Assembly, resolver: Resolver) -> dict[Res, tuple[Res, ...]]:
    """Security group -> the resources attached to it (every group, attached or not)."""
    launched = launched_by(assembly, resolver)
    groups = [
        Target(stack, logical_id, None)
        for stack in assembly.stacks
        for logical_id, _ in stack.resources_of(SECURITY_GROUP)
    ]
    found: dict[Res, list[Res]] = {group.res: [] for group in groups}
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources.items():
            if resource.get("Type") in _RULES:
                continue
            mentions = resolver.mentions(stack, resource.get("Properties") or {}).targets
            for group in groups:
                if any(mention.same(group) for mention in mentions):
                    found[group.res].extend(_fold(stack.res(logical_id), launched))
    return {group: tuple(sorted(set(users))) for group, users in found.items()}


def _role_mentions(resolver: Resolver, stack: StackTemplate, value: Json) -> Iterable[Target]:
    if isinstance(value, list):
        for item in value:
            yield from _role_mentions(resolver, stack, item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if _RUNS_AS_KEY.search(str(key)):
                yield from resolver.mentions(stack, item).targets
            else:
                yield from _role_mentions(resolver, stack, item)


def runs_as(assembly: Assembly, resolver: Resolver) -> dict[Res, tuple[Res, ...]]:
    """Role -> the workloads that run as it (only roles something runs as)."""
    launched = launched_by(assembly, resolver)
    named_by: dict[Res, list[Res]] = {}  # role or instance profile -> resources naming it
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources.items():
            if resource.get("Type") in _ATTACHES_ONLY:
                continue
            for target in _role_mentions(resolver, stack, resource.get("Properties") or {}):
                if target.type in (ROLE, INSTANCE_PROFILE):
                    named_by.setdefault(target.res, []).append(stack.res(logical_id))

    def workloads(res: Res, depth: int = 0) -> list[Res]:
        if res.type != INSTANCE_PROFILE or depth > 3:
            return _fold(res, launched)
        return [w for user in named_by.get(res, []) for w in workloads(user, depth + 1)]

    return {
        role: tuple(sorted({w for user in users for w in workloads(user)}))
        for role, users in named_by.items()
        if role.type == ROLE
    }
