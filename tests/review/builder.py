"""Write small cloud assemblies shaped like what aws-cdk-lib 2.275.0 writes into cdk.out.

Shapes measured on a probe app (see tools/review/load.py and tools/review/nag.py): stack
artifacts in manifest.json, `<stack>.metadata.json` with `aws:cdk:logicalId` and
`aws:cdk:acknowledged-rules` entries, and `validation-report.json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Template = dict[str, Any]


def resource(kind: str, path: str | None = None, **properties: Any) -> dict[str, Any]:
    """A template resource; `path` becomes its `aws:cdk:path` metadata, as the CLI writes it."""
    found: dict[str, Any] = {"Type": kind}
    if properties:
        found["Properties"] = properties
    if path is not None:
        found["Metadata"] = {"aws:cdk:path": path}
    return found


def ref(logical_id: str) -> dict[str, Any]:
    return {"Ref": logical_id}


def getatt(logical_id: str, attribute: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, attribute]}


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: Any, resource_: Any, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource_, **extra}


def suppressed(
    pack: str, rule: str, construct_path: str, reason: str, acknowledged_at: str
) -> dict[str, Any]:
    """A `suppressedViolations` entry as CDK writes it for a `<pack>::<rule>` acknowledgement."""
    return {
        "ruleName": rule,
        "description": "probe",
        "severity": "error",
        "violatingConstructs": [{"constructPath": construct_path}],
        "acknowledgedId": f"{pack}::{rule}",
        "reason": reason,
        "acknowledgedAt": acknowledged_at,
    }


def violation(rule: str, construct_path: str, severity: str = "error") -> dict[str, Any]:
    return {
        "ruleName": rule,
        "description": "probe",
        "severity": severity,
        "violatingConstructs": [{"constructPath": construct_path}],
    }


def plugin_report(
    name: str, violations: list[dict[str, Any]], suppressed_: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "pluginName": name,
        "conclusion": "failure" if violations else "success",
        "violations": violations,
    }
    if suppressed_:
        report["suppressedViolations"] = suppressed_
    return report


def write_assembly(
    outdir: Path,
    stacks: Mapping[str, Template],
    *,
    plugin_reports: list[dict[str, Any]] | None = None,
    acknowledgements: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """`outdir` as a cloud assembly; `plugin_reports=None` writes no validation report.

    `acknowledgements` maps a construct path to `{qualified rule id: reason}` and is recorded
    in the first stack's metadata file, as `Validations.of(x).acknowledge` does.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Any] = {}
    for index, (name, template) in enumerate(stacks.items()):
        (outdir / f"{name}.template.json").write_text(json.dumps(template, indent=1))
        metadata: dict[str, list[dict[str, Any]]] = {}
        if index == 0:
            for path, acks in (acknowledgements or {}).items():
                metadata[f"/{path}"] = [{"type": "aws:cdk:acknowledged-rules", "data": dict(acks)}]
        (outdir / f"{name}.metadata.json").write_text(json.dumps(metadata))
        artifacts[name] = {
            "type": "aws:cloudformation:stack",
            "environment": "aws://111111111111/us-east-1",
            "properties": {"templateFile": f"{name}.template.json"},
            "additionalMetadataFile": f"{name}.metadata.json",
            "displayName": name,
        }
    manifest = {"version": "55.0.0", "artifacts": artifacts}
    (outdir / "manifest.json").write_text(json.dumps(manifest))
    if plugin_reports is not None:
        report = {
            "version": "55.0.0",
            "title": "Validation Report",
            "pluginReports": plugin_reports,
        }
        (outdir / "validation-report.json").write_text(json.dumps(report))
    return outdir
