"""Acknowledging cdk-nag findings through CDK's validation API (cdk-nag 3.x).

cdk-nag 3 reports through `Validations.of(app)` plugins; a finding is acknowledged on the
narrowest construct with `Validations.of(construct).acknowledge(Acknowledgment(...))`, under
the id `<pack>::<rule>[<finding>]` that the synth output prints ("Acknowledge with ...").
Every reason must name the compensating control: reviewers read them in REVIEW.md.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct

_PACKS = ("AwsSolutions", "NIST.800.53.R5")


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge `rule` (e.g. `AwsSolutions-IAM5[Resource::*]`) on `construct` and below."""
    pack = next((p for p in _PACKS if rule.startswith(p + "-")), None)
    if pack is None:
        raise ValueError(f"unknown cdk-nag rule {rule!r}: expected a rule of {', '.join(_PACKS)}")
    if len(reason) < 20:
        raise ValueError(
            f"acknowledgement of {rule} needs a reason naming the compensating control"
        )
    Validations.of(construct).acknowledge(Acknowledgment(id=f"{pack}::{rule}", reason=reason))
