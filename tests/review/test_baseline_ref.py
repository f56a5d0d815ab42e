"""`--baseline-ref`: a git ref synthesized with this checkout's toolchain, then removed.

GIVEN a small git repository holding a tiny CDK app (one queue), and a later commit whose app
fails at synthesis
WHEN the review synthesizes a ref of it as the baseline
THEN the ref's own app and cdk.json are synthesized with this checkout's CDK CLI and Python;
a ref that does not exist or an app that fails is one line (the full output in a log file);
and the temporary folder is gone afterwards, whatever happened.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tools.review.baseline import BaselineError, Toolchain, app_command, from_ref

APP = """\
import aws_cdk as cdk
from aws_cdk import aws_sqs as sqs

app = cdk.App()
stack = cdk.Stack(app, "Mini")
sqs.Queue(stack, "Queue", enforce_ssl=True)
{extra}
app.synth()
"""


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _commit(repo: Path, extra: str, message: str) -> str:
    (repo / "app.py").write_text(APP.format(extra=extra))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("repo")
    _git(folder, "init", "-q", "-b", "main")
    (folder / "cdk.json").write_text(json.dumps({"app": "python3 app.py", "context": {}}))
    (folder / "requirements.txt").write_text("aws-cdk-lib==0.0.0\n")  # not this checkout's
    _commit(folder, "", "one queue")
    _git(folder, "tag", "v1")
    _commit(folder, 'raise SystemExit("error: onprem_cidrs must be a list")', "broken")
    _git(folder, "tag", "broken")
    return folder


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the temporary export goes: it must be empty again after every run."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


TOOLCHAIN = Toolchain.of(ROOT)


def test_a_ref_is_synthesized_with_this_toolchain_and_reviewed(
    repo: Path, scratch: Path, tmp_path: Path
) -> None:
    found = from_ref(repo, "v1", log=tmp_path / "synth.log", toolchain=TOOLCHAIN)
    commit = _git(repo, "rev-parse", "v1")
    assert found.name == f"`v1` ({commit[:12]})"
    assert [s["name"] for s in found.facts["stacks"]] == ["Mini"]
    assert [r["path"] for r in found.facts["resources"] if r["type"] == "AWS::SQS::Queue"] == [
        "Mini/Queue/Resource"
    ]
    # the ref pins other packages than this checkout: synthesized with this one's, and said so
    assert found.warnings
    assert "requirements.txt" in found.warnings[0]
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "synth.log").exists()


def test_a_ref_that_does_not_exist_is_one_line(repo: Path, scratch: Path, tmp_path: Path) -> None:
    with pytest.raises(BaselineError) as error:
        from_ref(repo, "origin/mian", log=tmp_path / "synth.log", toolchain=TOOLCHAIN)
    assert str(error.value).startswith("baseline 'origin/mian': no such commit in this repository")
    assert "\n" not in str(error.value)
    assert list(scratch.iterdir()) == []


def test_an_option_is_not_a_ref(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="is not a git ref"):
        from_ref(repo, "--output=/tmp/x", log=tmp_path / "synth.log", toolchain=TOOLCHAIN)


def test_a_ref_that_fails_to_synthesize_is_one_line_and_a_log(
    repo: Path, scratch: Path, tmp_path: Path
) -> None:
    log = tmp_path / "synth.log"
    with pytest.raises(BaselineError) as error:
        from_ref(repo, "broken", log=log, toolchain=TOOLCHAIN)
    message = str(error.value)
    assert message.startswith("baseline `broken` (")
    assert "synthesis failed: error: onprem_cidrs must be a list" in message
    assert message.endswith(f"(full output: {log})")
    assert "\n" not in message
    assert "onprem_cidrs must be a list" in log.read_text()
    assert list(scratch.iterdir()) == []


def test_the_refs_app_command_runs_with_this_python(tmp_path: Path) -> None:
    (tmp_path / "cdk.json").write_text(json.dumps({"app": ".venv/bin/python app.py --flag"}))
    assert app_command(tmp_path, "/opt/venv/bin/python") == "/opt/venv/bin/python app.py --flag"
    (tmp_path / "cdk.json").write_text(json.dumps({"app": "node bin/app.js"}))
    assert app_command(tmp_path, "/opt/venv/bin/python") == "node bin/app.js"


def test_a_folder_outside_git_says_so(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="is not in a git repository"):
        from_ref(tmp_path, "HEAD", log=tmp_path / "synth.log", toolchain=TOOLCHAIN)
