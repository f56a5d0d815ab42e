"""`make deploy` refuses, in one line, while onprem_cidrs is still the built-in default."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tools.deploy_gate import main, refusal


def _cdk_json(tmp_path: Path, **context: object) -> Path:
    path = tmp_path / f"cdk-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps({"context": {"environment": "dev", **context}}))
    return path


def test_refuses_while_onprem_cidrs_is_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a cdk.json that does not state onprem_cidrs
    # WHEN the gate runs
    # THEN it refuses with one line that names the key, its default and how to set it
    assert main(["--cdk-json", str(_cdk_json(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "onprem_cidrs is still the built-in default (192.168.0.0/16)" in err
    assert "-c onprem_cidrs=<cidr>" in err


def test_accepts_stated_networks_from_cdk_json_or_the_command_line(tmp_path: Path) -> None:
    stated = _cdk_json(tmp_path, onprem_cidrs=["10.20.0.0/16"])
    assert main(["--cdk-json", str(stated)]) == 0
    bare = _cdk_json(tmp_path)
    assert main(["--cdk-json", str(bare), "-c", "onprem_cidrs=10.20.0.0/16"]) == 0
    # stating the default's own value is a statement too: the operator chose it
    assert refusal({"onprem_cidrs": "192.168.0.0/16"}) is None


def test_an_invalid_value_is_refused_with_the_config_error(tmp_path: Path) -> None:
    reason = refusal({"onprem_cidrs": "0.0.0.0/0"})
    assert reason is not None
    assert reason.startswith("error: invalid context value onprem_cidrs='0.0.0.0/0'")


def test_other_cdk_arguments_pass_through(tmp_path: Path) -> None:
    stated = _cdk_json(tmp_path, onprem_cidrs=["10.20.0.0/16"])
    assert main(["--cdk-json", str(stated), "--profile", "prod", "--require-approval"]) == 0


def test_make_deploy_stops_before_synthesis_with_the_default(tmp_path: Path) -> None:
    # The repository's own cdk.json leaves onprem_cidrs to the operator: `make deploy` must
    # stop at the gate (exit non-zero, the one line), before it synthesizes or calls cdk.
    # No credentials reach it: should the gate ever let it through, cdk deploy cannot deploy.
    env = {
        **os.environ,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    result = subprocess.run(
        ["make", "--no-print-directory", "deploy"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode != 0
    assert "refusing to deploy: onprem_cidrs is still the built-in default" in result.stderr
    assert "cdk synth" not in result.stdout
    assert "cdk deploy" not in result.stdout
