"""`python -m tools.review NEW --baseline OLD`: the section at the top, the exit status for CI.

GIVEN two small assemblies (tests/review/test_diff.py's base app and a change of it)
WHEN the review compares them, with or without `--fail-on`
THEN REVIEW.md opens with "Changes since baseline", `--fail-on broadening` exits 1 and prints
the offending lines only for a broadening change, and a baseline that cannot be had is one
line while the report of the new assembly is still written (and `--fail-on` fails closed).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.review.builder import write_assembly
from tests.review.test_diff import BASE_ACKS, Template, _base, _props
from tools.review.__main__ import main
from tools.review.changes import HEADING


def _assembly(folder: Path, template: Template) -> str:
    return str(write_assembly(folder, {"App": template}, acknowledgements=BASE_ACKS))


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _assembly(tmp_path_factory.mktemp("old"), _base())


def _opened(folder: Path) -> str:
    template = copy.deepcopy(_base())
    _props(template, "ServerGroup")["SecurityGroupIngress"].append(
        {"IpProtocol": "tcp", "FromPort": 8501, "ToPort": 8501, "CidrIp": "172.16.0.0/12"}
    )
    return _assembly(folder, template)


def _narrowed(folder: Path) -> str:
    """A change that takes something away: the egress rule to 443 goes."""
    template = copy.deepcopy(_base())
    _props(template, "ServerGroup")["SecurityGroupEgress"] = [
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": "10.0.0.0/16"}
    ]
    return _assembly(folder, template)


def _run(new: str, out: Path, *args: str) -> int:
    return main([new, "--out-dir", str(out), "--skip-cfn-lint", *args])


def test_broadening_change_fails_and_prints_the_offending_line(
    old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = _opened(tmp_path / "new")
    status = _run(new, tmp_path / "review", "--baseline", old, "--fail-on", "broadening")
    printed = capsys.readouterr().out
    assert status == 1
    [line] = [line for line in printed.splitlines() if line.startswith("FAIL")]
    assert "added    ingress" in line
    assert "172.16.0.0/12 (outside the VPC) → LoadBalancer: tcp 8501" in line
    assert line.endswith("-- reachable from outside the VPC")
    # the same lines in a file, so a pipeline can tell "needs approval" from "broken"
    assert (tmp_path / "review" / "fail-on.txt").read_text() == line + "\n"
    report = (tmp_path / "review" / "REVIEW.md").read_text()
    assert report.startswith(HEADING + "\n")
    assert report.index(HEADING) < report.index("# Security review:")


def test_a_narrowing_change_passes_broadening_but_not_any(
    old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = _narrowed(tmp_path / "new")
    assert _run(new, tmp_path / "a", "--baseline", old, "--fail-on", "broadening") == 0
    assert "--fail-on broadening: nothing to approve" in capsys.readouterr().out
    assert not (tmp_path / "a" / "fail-on.txt").exists()
    assert _run(new, tmp_path / "b", "--baseline", old, "--fail-on", "any") == 1
    assert "FAIL (--fail-on any): removed  egress" in capsys.readouterr().out


def test_no_change_prints_no_changes(
    old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(old, tmp_path / "review", "--baseline", old, "--fail-on", "broadening") == 0
    assert f"Changes since baseline {old}: no changes" in capsys.readouterr().out
    assert "**No changes**" in (tmp_path / "review" / "REVIEW.md").read_text()


def test_a_saved_review_json_is_a_baseline_too(
    old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(old, tmp_path / "before") == 0
    saved = str(tmp_path / "before" / "review.json")
    assert _run(_opened(tmp_path / "new"), tmp_path / "after", "--baseline", saved) == 0
    assert "1 change, 1 broadening" in capsys.readouterr().out


def test_a_missing_baseline_is_one_line_and_the_report_is_still_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = _opened(tmp_path / "new")
    missing = str(tmp_path / "nowhere")
    assert _run(new, tmp_path / "review", "--baseline", missing) == 0
    [error] = capsys.readouterr().err.splitlines()
    assert error.startswith(f"baseline {missing}: ")
    assert "is not a cloud assembly" in error
    report = (tmp_path / "review" / "REVIEW.md").read_text()
    assert f"{HEADING}\n\n**Not compared:** baseline {missing}:" in report
    assert "# Security review: App" in report
    # asked to gate on the comparison, a run without one fails closed
    assert _run(new, tmp_path / "again", "--baseline", missing, "--fail-on", "broadening") == 1
    assert "no baseline to compare with" in capsys.readouterr().out


def test_fail_on_needs_a_baseline(old: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        _run(old, tmp_path, "--fail-on", "broadening")
    assert exited.value.code == 2


def test_a_saved_baseline_says_its_facts_are_as_saved(old: str, tmp_path: Path) -> None:
    assert _run(old, tmp_path / "before") == 0
    saved = str(tmp_path / "before" / "review.json")
    assert _run(old, tmp_path / "after", "--baseline", saved) == 0
    report = (tmp_path / "after" / "REVIEW.md").read_text()
    assert f"Baseline: `{saved}`, facts as saved by the review that wrote them" in report
