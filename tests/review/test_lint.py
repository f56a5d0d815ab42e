"""cfn-lint over the templates: errors and warnings counted, a broken linter reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.review.builder import write_assembly
from tools.review.collect import build_review
from tools.review.lint import GROUPED_RULES, run_cfn_lint
from tools.review.render import render


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


def test_cdk_generated_redundant_depends_on_is_one_line_with_a_count(tmp_path: Path) -> None:
    # GIVEN three resources that DependsOn what they already reference (as CDK writes them)
    resources: dict[str, object] = {"Topic": {"Type": "AWS::SNS::Topic"}}
    for index in range(3):
        resources[f"Sub{index}"] = {
            "Type": "AWS::SNS::Subscription",
            "DependsOn": ["Topic"],
            "Properties": {
                "TopicArn": {"Ref": "Topic"},
                "Protocol": "email",
                "Endpoint": "ops@example.com",
            },
        }
    file = tmp_path / "App.template.json"
    file.write_text(json.dumps({"Resources": resources}, indent=1))
    # WHEN cfn-lint runs and the report is written
    result = run_cfn_lint([file])
    outdir = write_assembly(tmp_path / "cdk.out", {"App": {"Resources": resources}})
    review = build_review(outdir, linter=lambda files: result)
    lines = render(review).splitlines()
    # THEN the three W3005 matches are one line with their count, not three table rows
    [group] = result.groups()
    assert (group.rule, group.count) == ("W3005", 3)
    assert result.ungrouped() == [m for m in result.matches if m.rule != "W3005"]
    assert [line for line in lines if "W3005" in line and line.startswith("- ")] == [
        "- Warning W3005 (3 matches): " + GROUPED_RULES["W3005"]
    ]
    assert not any(line.startswith("| Warning | W3005") for line in lines)
