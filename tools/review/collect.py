"""Everything the review reports, gathered from one cloud assembly."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.review.encryption import StoreEncryption, stores
from tools.review.exposure import Exposure, exposure
from tools.review.iam import RoleReview, Wildcard, roles
from tools.review.lint import LintResult, run_cfn_lint
from tools.review.load import Assembly, load_assembly
from tools.review.nag import AckIndex, NagReview, nag_review
from tools.review.secrets import Secrets, secrets

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
    return Review(
        assembly=assembly,
        exposure=exposure(assembly, vpc_cidrs=vpc_cidrs),
        roles=role_reviews,
        stores=stores(assembly),
        secrets=secrets(assembly, role_reviews),
        nag=nag,
        lint=lint,
        vpc_cidrs=tuple(vpc_cidrs),
    )
