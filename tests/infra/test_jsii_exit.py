"""mesh_stack/jsii_exit.py: app.py's exit once the assembly is written, without teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

# A small app whose template CloudFormation Validate flags: with the default context CDK
# prints the findings as warnings at the end of synth() and returns normally, so that report
# is the last output before the fast exit, and what a lost tail would lose.
_APP_WITH_A_REPORT = """
import sys
import aws_cdk as cdk
from mesh_stack.jsii_exit import leave_without_teardown
a = cdk.App(outdir=sys.argv[1])
cdk.CfnResource(cdk.Stack(a, "Small"), "Queue", type="AWS::SQS::Queue", properties={"Nope": 1})
a.synth()
leave_without_teardown(0)
sys.exit(3)  # leave_without_teardown returned: the fast path was not taken
"""


def test_fast_exit_keeps_every_output_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    # GIVEN a synthesis whose last act is printing a validation report, in a private TMPDIR
    temp, outdir = tmp_path / "tmp", tmp_path / "out"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    # WHEN it leaves through leave_without_teardown, as app.py does
    result = subprocess.run(
        [sys.executable, "-c", _APP_WITH_A_REPORT, str(outdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # THEN it exits 0 by the fast path, the assembly is complete, the report's last line
    # reached stderr, and jsii's runtime and kernel directories are gone once Node has exited
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((outdir / "Small.template.json").read_text())["Resources"]
    assert (outdir / "validation-report.json").is_file()
    assert "Acknowledge with 'CloudFormation-Validate::F3002'" in result.stderr
    assert "A copy of this report can be found in" in result.stderr, result.stderr[-2000:]
    for _ in range(600):  # Node removes its directory as it exits, after Python has gone
        if not any(temp.iterdir()):
            break
        time.sleep(0.1)
    assert sorted(p.name for p in temp.iterdir()) == []


# app.py run as `python app.py` (the real file, its real __main__ block) with MeshStack
# replaced by one that adds a fault, the way a change to the project could. CDK_APP_MODE is
# left unset and pytest's variables are removed: CDK throws a validation failure as an error
# only in the "inmemory"/"unknown" app modes (aws-cdk-lib 2.275,
# core/lib/private/synthesis-validation.js: cdkAppMode reads PYTEST_VERSION too).
_APP_WITH_A_FAULT = """
import runpy, sys
import jsii
from aws_cdk import aws_sqs as sqs
from constructs import IValidation
import mesh_stack.stack

FAULT = sys.argv[1]

@jsii.implements(IValidation)
class Broken:
    def validate(self):
        return ["the stack is broken on purpose"]

class MeshStackWithAFault(mesh_stack.stack.MeshStack):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if FAULT == "nag-finding":
            sqs.Queue(self, "QueueNobodyAcknowledged")  # AwsSolutions-SQS3/SQS4: no DLQ, no TLS
        else:
            self.node.add_validation(Broken())

mesh_stack.stack.MeshStack = MeshStackWithAFault
sys.argv = ["app.py"]
runpy.run_path("app.py", run_name="__main__")
"""


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("nag-finding", "AwsSolutions-SQS4"),
        ("failed-validation", "the stack is broken on purpose"),
    ],
)
def test_a_synthesis_that_fails_exits_non_zero_with_its_message(
    fault: str, message: str, tmp_path: Path
) -> None:
    # GIVEN the real app.py with one fault: an unacknowledged cdk-nag finding, or a construct
    # validation that fails during synth()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    env |= {"CDK_OUTDIR": str(tmp_path / "out"), "CDK_CONTEXT_JSON": json.dumps(context)}
    # WHEN it runs as `python app.py` does
    result = subprocess.run(
        [sys.executable, "-c", _APP_WITH_A_FAULT, fault],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    # THEN the fast exit is not taken: non-zero, and the reason is on stderr
    assert result.returncode != 0, result.stderr[-3000:]
    assert message in result.stderr, result.stderr[-3000:]


def test_a_synthesis_leaves_no_staging_folder_and_a_complete_assembly(tmp_path: Path) -> None:
    # GIVEN the real app.py, in a private TMPDIR, with asset staging on (the default)
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    env |= {"CDK_OUTDIR": str(out), "CDK_CONTEXT_JSON": json.dumps(context), "TMPDIR": str(temp)}
    # WHEN it synthesizes and leaves through the fast exit
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # THEN the assembly holds each function's code (its own modules and lambda/shared's) ...
    staged = {p.name for d in out.glob("asset.*") if d.is_dir() for p in d.iterdir()}
    assert {"reconcile.py", "teardown.py", "connections.py"} <= staged
    # AND no staging folder is left behind (one leaked per synth before)
    assert [p.name for p in temp.iterdir() if p.name.startswith("mesh-lambda-assets-")] == []


_STAGING_OFF = """
import sys
import aws_cdk as cdk
from mesh_stack import lambda_code

app = cdk.App(context={lambda_code.DISABLE_STAGING: sys.argv[1] == "off"})
print(lambda_code.staged("registrar"))
lambda_code.finish_staging(app)
"""


@pytest.mark.parametrize(("staging", "kept"), [("off", True), ("on", False)])
def test_staging_folders_outlive_the_process_only_when_cdk_does_not_copy_them(
    tmp_path: Path, staging: str, kept: bool
) -> None:
    # GIVEN a process that assembled a function's code, with CDK's asset staging off (the
    # manifest then points into the folder: `cdk synth --no-staging`, SAM) or on
    # WHEN it finishes the staging and exits normally (atexit runs)
    result = subprocess.run(
        [sys.executable, "-c", _STAGING_OFF, staging],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    folder = Path(result.stdout.strip().splitlines()[-1])
    # THEN the folder is still there only when staging is off
    assert folder.is_relative_to(tmp_path)
    assert (folder / "reconcile.py").is_file() is kept
