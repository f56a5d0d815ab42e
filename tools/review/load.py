"""Read a cloud assembly folder into plain data: stacks, templates, construct paths, acks.

What aws-cdk-lib 2.275.0 writes and this module relies on (measured, not assumed):
- `manifest.json`: artifacts of type `aws:cloudformation:stack` name their `templateFile`,
  optional `stackName` and `additionalMetadataFile` (`<stack>.metadata.json`); stages are
  nested `cdk:cloud-assembly` artifacts with their own manifest.
- `<stack>.metadata.json`: construct path -> entries; `aws:cdk:logicalId` maps paths to
  logical IDs (present even without `aws:cdk:path` template metadata, i.e. when the app is
  synthesized by `app.synth()` rather than the CLI) and `aws:cdk:acknowledged-rules` holds
  every `Validations.of(x).acknowledge(...)` as `{"<namespace>::<rule>": reason}`.
- `validation-report.json`: written whenever a validation plugin (a cdk-nag pack) is
  registered, pass or fail; see `tools.review.nag`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.review.model import Res

Json = Any  # parsed JSON: the templates are CloudFormation, not a schema we own

VALIDATION_REPORT = "validation-report.json"
ACK_METADATA = "aws:cdk:acknowledged-rules"
LOGICAL_ID_METADATA = "aws:cdk:logicalId"


@dataclass(frozen=True)
class Acknowledgement:
    """One `Validations.of(construct).acknowledge(...)` as recorded in construct metadata."""

    path: str  # construct path it was recorded on, without a leading slash
    qualified_id: str  # e.g. "AwsSolutions::AwsSolutions-IAM5[Resource::*]"
    reason: str

    @property
    def namespace(self) -> str:
        """Plugin namespace; CDK records ids given without one under `Annotation`."""
        head, sep, _ = self.qualified_id.partition("::")
        return head if sep and "[" not in head else ""

    @property
    def rule(self) -> str:
        """The rule id without its namespace, as cdk-nag names findings."""
        return self.qualified_id[len(self.namespace) + 2 :] if self.namespace else self.qualified_id

    def covers(self, path: str) -> bool:
        """True when recorded on `path` itself or on one of its ancestors."""
        return self.path in ("", path) or path.startswith(self.path + "/")


@dataclass(frozen=True)
class StackTemplate:
    """One synthesized template and the construct path of each of its logical IDs."""

    name: str  # file stem: the artifact id for stacks, unique within the assembly
    stack_name: str  # the CloudFormation stack name it deploys as
    file: Path
    template: dict[str, Json]
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, dict[str, Json]]:
        resources: dict[str, dict[str, Json]] = self.template.get("Resources") or {}
        return resources

    def resources_of(self, *types: str) -> Iterator[tuple[str, dict[str, Json]]]:
        for logical_id, resource in self.resources.items():
            if resource.get("Type") in types:
                yield logical_id, resource

    def properties(self, logical_id: str) -> dict[str, Json]:
        props: dict[str, Json] = self.resources.get(logical_id, {}).get("Properties") or {}
        return props

    def type_of(self, logical_id: str) -> str:
        return str(self.resources.get(logical_id, {}).get("Type", ""))

    def path_of(self, logical_id: str) -> str:
        """Construct path of a logical ID ('' when the synthesizer recorded none)."""
        return self.paths.get(logical_id, "")

    def res(self, logical_id: str) -> Res:
        return Res(self.name, logical_id, self.path_of(logical_id), self.type_of(logical_id))

    def label(self, logical_id: str) -> str:
        """Markdown label: the logical ID in code, then the construct path reviewers know."""
        path = self.path_of(logical_id)
        return f"`{logical_id}` ({path})" if path else f"`{logical_id}`"


@dataclass(frozen=True)
class Assembly:
    outdir: Path
    stacks: list[StackTemplate]
    report: Json | None  # validation-report.json, None when no plugin was registered
    acknowledgements: list[Acknowledgement]

    def stack_named(self, name: str) -> StackTemplate | None:
        """By file stem or by CloudFormation stack name (what Fn::GetStackOutput uses)."""
        for stack in self.stacks:
            if name in (stack.name, stack.stack_name):
                return stack
        return None


def _read_json(path: Path) -> Json:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _strip(path: str) -> str:
    return path.lstrip("/")


def _metadata_entries(outdir: Path, artifact: dict[str, Json]) -> dict[str, list[Json]]:
    entries: dict[str, list[Json]] = {}
    for path, items in (artifact.get("metadata") or {}).items():
        entries.setdefault(_strip(path), []).extend(items)
    extra = artifact.get("additionalMetadataFile")
    if extra and (outdir / extra).exists():
        for path, items in _read_json(outdir / extra).items():
            entries.setdefault(_strip(path), []).extend(items)
    return entries


def _paths_from_template(template: dict[str, Json]) -> dict[str, str]:
    return {
        logical_id: str(resource["Metadata"]["aws:cdk:path"])
        for logical_id, resource in (template.get("Resources") or {}).items()
        if isinstance(resource.get("Metadata"), dict) and "aws:cdk:path" in resource["Metadata"]
    }


def _load_manifest(outdir: Path, stacks: list[StackTemplate], acks: list[Acknowledgement]) -> None:
    manifest = _read_json(outdir / "manifest.json")
    for artifact_id, artifact in (manifest.get("artifacts") or {}).items():
        kind = artifact.get("type")
        props = artifact.get("properties") or {}
        if kind == "cdk:cloud-assembly" and props.get("directoryName"):
            _load_manifest(outdir / props["directoryName"], stacks, acks)
            continue
        if kind != "aws:cloudformation:stack":
            continue
        file = outdir / props["templateFile"]
        template = _read_json(file)
        entries = _metadata_entries(outdir, artifact)
        paths = _paths_from_template(template)
        for path, items in entries.items():
            for item in items:
                if item.get("type") == LOGICAL_ID_METADATA and isinstance(item.get("data"), str):
                    paths.setdefault(item["data"], path)
                elif item.get("type") == ACK_METADATA and isinstance(item.get("data"), dict):
                    acks.extend(
                        Acknowledgement(path, str(rule), str(reason))
                        for rule, reason in item["data"].items()
                    )
        stacks.append(
            StackTemplate(
                name=file.name.removesuffix(".template.json"),
                stack_name=str(props.get("stackName") or artifact_id),
                file=file,
                template=template,
                paths=paths,
            )
        )


def load_assembly(outdir: str | Path) -> Assembly:
    """Every stack template (plus nested-stack templates) with paths and acknowledgements.

    Raises FileNotFoundError naming the folder when it is not a cloud assembly.
    """
    root = Path(outdir)
    if not (root / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{root} is not a cloud assembly: no manifest.json (run `make synth` first)"
        )
    stacks: list[StackTemplate] = []
    acks: list[Acknowledgement] = []
    _load_manifest(root, stacks, acks)
    known = {stack.file.resolve() for stack in stacks}
    for file in sorted(root.glob("*.template.json")):  # nested stacks are not artifacts
        if file.resolve() not in known:
            template = _read_json(file)
            name = file.name.removesuffix(".template.json")
            stacks.append(StackTemplate(name, name, file, template, _paths_from_template(template)))
    report_file = root / VALIDATION_REPORT
    report = _read_json(report_file) if report_file.is_file() else None
    return Assembly(root, stacks, report, acks)
