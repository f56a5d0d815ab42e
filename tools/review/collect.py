"""Everything the review reports, gathered from one cloud assembly."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tools.review.consul import ConsulSide, consul_side
from tools.review.containers import TaskNetwork, task_networks
from tools.review.egress import Egress, egress_rules
from tools.review.encryption import StoreEncryption, stores
from tools.review.entry_points import EntryPoint, entry_points
from tools.review.exposure import Exposure, exposure, hidden_clients
from tools.review.iam import RoleReview, Wildcard, roles
from tools.review.kms import KeyReview, keys
from tools.review.lint import LintResult, run_cfn_lint
from tools.review.load import Assembly, load_assembly
from tools.review.model import Res
from tools.review.nag import AckIndex, NagReview, nag_review
from tools.review.network_paths import NetworkPath, network_paths
from tools.review.reachability import Attachments, paths, through_open_load_balancers
from tools.review.reachability import Path as ReachPath
from tools.review.refs import Resolver
from tools.review.resource_policies import ResourcePolicy, resource_policies
from tools.review.secrets import Secrets, secrets
from tools.review.workloads import runs_as

Linter = Callable[[Sequence[Path]], LintResult]


@dataclass(frozen=True)
class Review:
    assembly: Assembly
    exposure: Exposure
    roles: list[RoleReview]
    stores: list[StoreEncryption]
    secrets: Secrets
    nag: NagReview
    lint: LintResult
    vpc_cidrs: tuple[str, ...]
    egress: Egress
    keys: list[KeyReview]
    resource_policies: list[ResourcePolicy]
    task_networks: list[TaskNetwork]
    consul: ConsulSide
    reachability: list[ReachPath]
    behind_groups: dict[Res, tuple[Res, ...]]  # security group -> what it is attached to
    runs_as: dict[Res, tuple[Res, ...]]  # role -> the workloads that run as it
    entry_points: list[EntryPoint] = field(default_factory=list)  # reached by the internet
    network_paths: list[NetworkPath] = field(default_factory=list)  # routes, VPN, TGW, peering

    @property
    def report_found(self) -> bool:
        return self.assembly.report is not None

    @property
    def wildcards(self) -> list[Wildcard]:
        return [wildcard for role in self.roles for wildcard in role.wildcards]

    @property
    def unacknowledged_wildcards(self) -> list[Wildcard]:
        return [wildcard for wildcard in self.wildcards if not wildcard.acknowledged]

    def resource_counts(self) -> dict[str, Counter[str]]:
        return {
            stack.name: Counter(str(r.get("Type")) for r in stack.resources.values())
            for stack in self.assembly.stacks
        }


def build_review(
    outdir: str | Path, *, vpc_cidrs: Sequence[str] = (), linter: Linter | None = run_cfn_lint
) -> Review:
    """Read `outdir` and evaluate every section; `linter=None` skips cfn-lint."""
    assembly = load_assembly(outdir)
    nag = nag_review(assembly)
    role_reviews = roles(assembly, AckIndex(assembly, nag))
    files = [stack.file for stack in assembly.stacks]
    lint = linter(files) if linter is not None else LintResult([], skipped="skipped on request")
    found = exposure(assembly, vpc_cidrs=vpc_cidrs)
    networks = task_networks(assembly)
    attachments = Attachments(assembly)
    hidden = hidden_clients(assembly, found.listeners)
    found = replace(found, rules=through_open_load_balancers(found.rules, attachments, hidden))
    return Review(
        assembly=assembly,
        exposure=found,
        roles=role_reviews,
        stores=stores(assembly),
        secrets=secrets(assembly, role_reviews),
        nag=nag,
        lint=lint,
        vpc_cidrs=tuple(vpc_cidrs),
        egress=egress_rules(assembly, vpc_cidrs=vpc_cidrs),
        keys=keys(assembly, role_reviews),
        resource_policies=resource_policies(assembly),
        task_networks=networks,
        consul=consul_side(assembly),
        reachability=paths(found, networks, attachments),
        behind_groups=attachments.by_group,
        runs_as=runs_as(assembly, Resolver(assembly)),
        entry_points=entry_points(assembly),
        network_paths=network_paths(assembly),
    )
