"""cdk-nag results from the CDK validation report, and the gate `make synth` applies.

aws-cdk-lib 2.275.0 with cdk-nag 3.0.2 (measured with a probe app, see the issue notes):
- The report is `validation-report.json` in the assembly folder. CDK writes it whenever a
  validation plugin is registered, whether validation passed or failed, so a missing file
  means no pack ran. (`policy-validation-report.json`, which cdk-nag's README names, is the
  legacy format without acknowledgements, written only with the context flag
  `@aws-cdk/core:validationReportJson`.)
- Schema: `{"version", "title", "pluginReports": [{"pluginName", "conclusion", "metadata"?,
  "violations": [...], "suppressedViolations"?: [...]}]}`; a violation has `ruleName`,
  `description`, `severity`, `violatingConstructs: [{"constructPath", ...}]`; a suppressed
  one adds `acknowledgedId`, `reason`, `acknowledgedAt`.
- A pack with no finding at all, open or acknowledged, is left out of `pluginReports`.
- An acknowledgement under the pack's namespace (`AwsSolutions::AwsSolutions-S1`, what the
  synth output prints) is applied by CDK and listed in `suppressedViolations` with its reason.
  One without a namespace (`AwsSolutions-S1`) is recorded as `Annotation::AwsSolutions-S1`
  and applied inside cdk-nag: the finding then vanishes from the report without a trace,
  so the review reads those reasons from construct metadata instead.

Stale acknowledgements: an acknowledgement under a cdk-nag pack's namespace that no reported
finding used (the finding went away, or its id changed with the code) is stale and fails the
gate, as does a plain-id one for a pack rule (its use leaves no trace, so it can never be
checked). Acknowledgements aws-cdk-lib itself records for checks that are not registered here
(`CloudFormation-Validate::...`) are listed, never failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tools.review.load import VALIDATION_REPORT, Acknowledgement, Assembly, Json, load_assembly

NAG_PACKS = (
    "AwsSolutions",
    "HIPAA.Security",
    "NIST.800.53.R4",
    "NIST.800.53.R5",
    "PCI.DSS.321",
    "Serverless",
)


@dataclass(frozen=True)
class Finding:
    """One finding on one construct, open or acknowledged."""

    plugin: str
    rule: str
    severity: str
    path: str
    description: str
    reason: str = ""
    acknowledged_id: str = ""
    acknowledged_at: str = ""


@dataclass(frozen=True)
class PluginSummary:
    name: str
    conclusion: str
    open: int
    acknowledged: int
    error: str = ""


@dataclass(frozen=True)
class NagReview:
    plugins: list[PluginSummary]
    open: list[Finding]
    acknowledged: list[Finding]
    inside_nag: list[Acknowledgement]  # plain-id acks cdk-nag applied without a report trace
    unmatched: list[Acknowledgement]  # namespaced acks no reported finding used

    @property
    def stale(self) -> list[Acknowledgement]:
        """Acknowledgements that fail the gate: unused pack acks and unverifiable plain ids."""
        packs = set(NAG_PACKS) | {plugin.name for plugin in self.plugins}
        unused = [ack for ack in self.unmatched if ack.namespace in packs]
        return sorted([*unused, *self.inside_nag], key=lambda a: (a.path, a.qualified_id))

    @property
    def not_checked(self) -> list[Acknowledgement]:
        """Unused acknowledgements of checks that are not registered (aws-cdk-lib's own)."""
        stale = set(self.stale)
        return [ack for ack in self.unmatched if ack not in stale]


def stale_message(ack: Acknowledgement) -> str:
    """One line for the gate: the acknowledgement, where it is, and what to do."""
    where = ack.path or "the app"
    if ack.namespace == "Annotation":
        return (
            f"unverifiable acknowledgement {ack.rule} at {where}: without the pack namespace "
            "cdk-nag applies it without a trace, so nobody can tell when it goes stale "
            "(acknowledge through mesh_stack/nag.py)"
        )
    return (
        f"stale acknowledgement {ack.qualified_id} at {where}: no finding uses it "
        "(the code changed under it: remove it, or fix its id)"
    )


def stale_acknowledgements(outdir: str | Path) -> list[Acknowledgement]:
    """The gate's second check; FileNotFoundError like `unacknowledged_findings`."""
    read_report(outdir)
    return nag_review(load_assembly(outdir)).stale


def _findings(report: Json, key: str) -> list[Finding]:
    found: list[Finding] = []
    for plugin in report.get("pluginReports") or []:
        name = str(plugin.get("pluginName", ""))
        error = (plugin.get("metadata") or {}).get("error")
        if key == "violations" and error and not plugin.get("violations"):
            # A plugin that crashed reports failure with no violations: never a pass.
            found.append(Finding(name, "(plugin failed)", "fatal", "", str(error)))
        for violation in plugin.get(key) or []:
            for construct in violation.get("violatingConstructs") or [{}]:
                found.append(
                    Finding(
                        plugin=name,
                        rule=str(violation.get("ruleName", "")),
                        severity=str(violation.get("severity", "")),
                        path=str(construct.get("constructPath", "")),
                        description=str(violation.get("description", "")),
                        reason=str(violation.get("reason", "")),
                        acknowledged_id=str(violation.get("acknowledgedId", "")),
                        acknowledged_at=str(violation.get("acknowledgedAt", "")),
                    )
                )
    return found


def read_report(outdir: str | Path) -> Json:
    """The parsed validation report; FileNotFoundError says why it is missing."""
    root = Path(outdir)
    file = root / VALIDATION_REPORT
    if file.is_file():
        return json.loads(file.read_text())
    if not (root / "manifest.json").is_file():
        raise FileNotFoundError(f"{root} is not a cloud assembly: no manifest.json")
    raise FileNotFoundError(
        f"{file} is missing: CDK writes it whenever a validation plugin is registered, "
        "so no cdk-nag pack ran (register them with Validations.of(app).add_plugins(...))"
    )


def unacknowledged_findings(outdir: str | Path) -> list[Finding]:
    """Open findings of every validation plugin (cdk-nag packs and CDK's own), one per construct.

    The synth gate fails when this is not empty. A plugin that crashed counts as a finding.
    Raises FileNotFoundError when the assembly has no validation report (no pack ran).
    """
    return _findings(read_report(outdir), "violations")


def acknowledged_findings(outdir: str | Path) -> list[Finding]:
    """Findings CDK suppressed because of an acknowledgement, each with its reason."""
    return _findings(read_report(outdir), "suppressedViolations")


def _is_nag_rule(rule: str) -> bool:
    return any(rule.startswith(pack + "-") for pack in NAG_PACKS)


def nag_review(assembly: Assembly) -> NagReview:
    report = assembly.report if assembly.report is not None else {"pluginReports": []}
    open_findings = _findings(report, "violations")
    acknowledged = _findings(report, "suppressedViolations")
    plugins = [
        PluginSummary(
            name=str(plugin.get("pluginName", "")),
            conclusion=str(plugin.get("conclusion", "")),
            open=sum(f.plugin == plugin.get("pluginName") for f in open_findings),
            acknowledged=sum(f.plugin == plugin.get("pluginName") for f in acknowledged),
            error=str((plugin.get("metadata") or {}).get("error") or ""),
        )
        for plugin in report.get("pluginReports") or []
    ]
    used = {(f.acknowledged_id, f.acknowledged_at) for f in acknowledged}
    inside_nag: list[Acknowledgement] = []
    unmatched: list[Acknowledgement] = []
    for ack in assembly.acknowledgements:
        if (ack.qualified_id, ack.path) in used:
            continue
        if ack.namespace == "Annotation" and _is_nag_rule(ack.rule):
            inside_nag.append(ack)
        else:
            unmatched.append(ack)
    return NagReview(plugins, open_findings, acknowledged, inside_nag, unmatched)


@dataclass(frozen=True)
class Cover:
    """An acknowledgement that covers a finding, and where the review found it."""

    rule: str
    reason: str
    acknowledged_at: str
    source: str  # "validation report" or "construct metadata"


class AckIndex:
    """Which acknowledgements cover a rule at a construct path, from both places CDK keeps them.

    The validation report is authoritative for acknowledgements CDK applied; construct
    metadata adds the plain-id ones cdk-nag applied itself, which the report does not list.
    """

    def __init__(self, assembly: Assembly, nag: NagReview) -> None:
        self._acks = assembly.acknowledgements
        self._acknowledged = nag.acknowledged
        self._open = nag.open

    def covering(self, path: str, rules: list[str]) -> list[Cover]:
        found = [
            Cover(f.rule, f.reason, f.acknowledged_at, "validation report")
            for f in self._acknowledged
            if f.rule in rules and f.path == path
        ]
        seen = {(cover.rule, cover.acknowledged_at) for cover in found}
        for ack in self._acks:
            if ack.rule in rules and ack.covers(path) and (ack.rule, ack.path) not in seen:
                seen.add((ack.rule, ack.path))
                found.append(Cover(ack.rule, ack.reason, ack.path, "construct metadata"))
        return found

    def is_open(self, path: str, rules: list[str]) -> bool:
        """True when the report lists one of `rules` at `path` as an open finding."""
        return any(f.rule in rules and f.path == path for f in self._open)
