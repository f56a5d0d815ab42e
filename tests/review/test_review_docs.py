"""docs/review.md: the pipeline snippet is valid YAML that runs what the tool provides.

(tests/docs checks the shell blocks and the make targets of every doc page.)
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.conftest import ROOT
from tools.review.__main__ import FAIL_ON_FILE, SYNTH_LOG

DOC = ROOT / "docs" / "review.md"


def _workflow() -> dict[str, Any]:
    [block] = re.findall(r"^```yaml\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL)
    found: dict[str, Any] = yaml.safe_load(block)
    return found


def test_the_workflow_reviews_against_the_base_branch_with_the_full_history() -> None:
    workflow = _workflow()
    steps = workflow["jobs"]["review"]["steps"]
    checkout = next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0
    [review] = [s for s in steps if "make review" in str(s.get("run", ""))]
    assert review["env"]["BASE"] == "origin/${{ github.base_ref }}"
    assert 'BASELINE="$BASE"' in review["run"]
    assert 'REVIEW_ARGS="--fail-on broadening"' in review["run"]
    assert f"review/{FAIL_ON_FILE}" in review["run"]
    approve = workflow["jobs"]["approve"]
    assert approve["needs"] == "review"
    assert "environment" in approve


def test_the_files_the_doc_names_are_the_ones_the_tool_writes() -> None:
    text = DOC.read_text()
    assert f"review/{FAIL_ON_FILE}" in text
    assert f"review/{SYNTH_LOG}" in text
