"""cfn-lint over every synthesized template, as structured matches.

Runs the pinned `cfn-lint` next to the interpreter (the virtualenv's) with `--format json`.
Its exit code is a bit mask (2 errors, 4 warnings, 8 informational); the JSON on stdout is
what counts, and output that is not JSON means cfn-lint itself failed.

Some rules fire once per CDK-generated construct dependency and say the same thing each time;
the report shows each of those as one line with a count (`GROUPED_RULES`), the rest one by one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LintMatch:
    file: str
    level: str  # Error, Warning, Informational
    rule: str
    message: str
    location: str  # e.g. Resources/Queue/Properties/VisibilityTimeout (line 12)


# W3005 "dependency already enforced by a Ref/GetAtt": CDK writes a DependsOn for every
# `node.add_dependency` and every dependency of a construct's children, whether or not a
# property reference already orders the two resources. Harmless; one line says so.
GROUPED_RULES = {
    "W3005": "redundant DependsOn (CDK adds one per construct dependency; a Ref/GetAtt "
    "already orders the resources)",
}


@dataclass(frozen=True)
class LintGroup:
    rule: str
    level: str
    count: int
    meaning: str


@dataclass(frozen=True)
class LintResult:
    matches: list[LintMatch]
    skipped: str = ""  # why cfn-lint did not run; empty when it ran

    def groups(self) -> list[LintGroup]:
        """One entry per grouped rule that matched, with its count."""
        found: list[LintGroup] = []
        for rule, meaning in GROUPED_RULES.items():
            hits = [match for match in self.matches if match.rule == rule]
            if hits:
                found.append(LintGroup(rule, hits[0].level, len(hits), meaning))
        return found

    def ungrouped(self) -> list[LintMatch]:
        return [match for match in self.matches if match.rule not in GROUPED_RULES]

    def count(self, level: str) -> int:
        return sum(match.level == level for match in self.matches)

    @property
    def errors(self) -> int:
        return self.count("Error")

    @property
    def warnings(self) -> int:
        return self.count("Warning")


def cfn_lint_executable() -> Path:
    """The virtualenv's cfn-lint, else the one on PATH."""
    beside = Path(sys.executable).parent / "cfn-lint"
    if beside.exists():
        return beside
    found = shutil.which("cfn-lint")
    if found is None:
        raise FileNotFoundError(
            f"cfn-lint is neither next to {sys.executable} nor on PATH (run `make install`)"
        )
    return Path(found)


def _location(match: dict[str, object]) -> str:
    location = match.get("Location")
    if not isinstance(location, dict):
        return ""
    path = location.get("Path") or []
    line = (location.get("Start") or {}).get("LineNumber")
    text = "/".join(str(part) for part in path) if isinstance(path, list) else ""
    return f"{text} (line {line})" if line else text


def run_cfn_lint(files: Sequence[Path], *, executable: Path | None = None) -> LintResult:
    """Lint `files` in one cfn-lint run; RuntimeError when cfn-lint could not run."""
    if not files:
        return LintResult([])
    command = [str(executable or cfn_lint_executable()), "--format", "json", *map(str, files)]
    # The command is the pinned linter and template paths from the assembly, no shell.
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    tail = (result.stderr or result.stdout).strip()[-2000:]
    failed = RuntimeError(f"cfn-lint failed (exit {result.returncode}): {tail}")
    if result.returncode & 1 or (result.returncode and not result.stdout.strip()):
        raise failed  # 1 is not in the findings bit mask: cfn-lint itself broke
    try:
        raw = json.loads(result.stdout or "[]")
    except json.JSONDecodeError as err:
        raise failed from err
    names = {str(path): Path(path).name for path in files}
    return LintResult(
        [
            LintMatch(
                file=names.get(str(match.get("Filename")), str(match.get("Filename"))),
                level=str(match.get("Level", "")),
                rule=str((match.get("Rule") or {}).get("Id", "")),
                message=str(match.get("Message", "")),
                location=_location(match),
            )
            for match in raw
        ]
    )
