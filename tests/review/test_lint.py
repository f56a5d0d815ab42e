"""cfn-lint over the templates: errors and warnings counted, a broken linter reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.review.lint import run_cfn_lint


def test_counts_errors_and_warnings_with_their_location(tmp_path: Path) -> None:
    # GIVEN a queue with a property that does not exist and a redundant DependsOn
    template = {
        "Resources": {
            "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"Bogus": 1}},
            "Topic": {"Type": "AWS::SNS::Topic", "DependsOn": ["Queue"]},
        }
    }
    file = tmp_path / "App.template.json"
    file.write_text(json.dumps(template, indent=1))
    # WHEN the pinned cfn-lint runs over it
    result = run_cfn_lint([file])
    # THEN the error names the property and where it is
    assert result.errors == 1
    [error] = [m for m in result.matches if m.level == "Error"]
    assert (error.rule, error.file) == ("E3002", "App.template.json")
    assert error.location.startswith("Resources/Queue/Properties/Bogus")


def test_no_templates_means_nothing_to_lint() -> None:
    assert run_cfn_lint([]).matches == []


def test_fails_when_cfn_lint_cannot_run(tmp_path: Path) -> None:
    broken = tmp_path / "cfn-lint"
    broken.write_text("#!/bin/sh\necho 'Traceback: boom' >&2\nexit 1\n")
    broken.chmod(0o755)
    template = tmp_path / "App.template.json"
    template.write_text("{}")
    with pytest.raises(RuntimeError, match=r"cfn-lint failed \(exit 1\): Traceback: boom"):
        run_cfn_lint([template], executable=broken)
