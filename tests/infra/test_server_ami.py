"""The servers' AMI changes only when an operator records a new one (`make refresh-ami`).

`refresh` runs against botocore Stubbers of SSM and EC2 whose answers follow the API
references (SSM GetParameter `Parameter.Value`; EC2 DescribeImages `Images[]` with
`ImageId`, `Name`, `Architecture`, `State`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import boto3
import pytest
from aws_cdk.assertions import Template
from botocore.stub import Stubber

from mesh_stack import server_image
from mesh_stack.config import MeshConfig
from mesh_stack.config_errors import ConfigError
from mesh_stack.stack import MeshStack
from tests.conftest import cdk_json_context
from tools import server_ami

OLD = "ami-0aaaaaaaaaaaaaaaa"
NEW = "ami-0bbbbbbbbbbbbbbbb"
ARM = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-arm64"


def stubbed(image_id: str, *, architecture: str = "arm64", state: str = "available") -> Any:
    ssm = boto3.client("ssm", region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")  # fmt: skip
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")  # fmt: skip
    ssm_stub, ec2_stub = Stubber(ssm), Stubber(ec2)
    ssm_stub.add_response(
        "get_parameter",
        {"Parameter": {"Name": ARM, "Type": "String", "Value": image_id, "Version": 7}},
        {"Name": ARM},
    )
    ec2_stub.add_response(
        "describe_images",
        {
            "Images": [
                {
                    "ImageId": image_id,
                    "Name": "al2023-ami-2023.9.20260101.0-kernel-6.1-arm64",
                    "Architecture": architecture,
                    "State": state,
                }
            ]
        },
        {"ImageIds": [image_id]},
    )
    ssm_stub.activate()
    ec2_stub.activate()
    return ssm, ec2, (ssm_stub, ec2_stub)


def record(path: Path, image_id: str) -> None:
    server_image.save_record(
        {
            "us-east-1/arm64": server_image.RecordedImage(
                image_id=image_id, name="al2023", parameter=ARM, recorded_at="2026-01-01T00:00:00Z"
            )
        },
        path,
    )


def test_refresh_records_the_current_image_of_the_region_and_architecture(tmp_path: Path) -> None:
    # GIVEN a record holding an older image
    path = tmp_path / "server-ami.json"
    record(path, OLD)
    ssm, ec2, stubs = stubbed(NEW)
    # WHEN the operator refreshes it
    now = datetime(2026, 12, 1, tzinfo=UTC)
    config = MeshConfig.from_context({})
    old, _ = server_ami.refresh(config, ssm=ssm, ec2=ec2, path=path, now=now)
    # THEN the record names the image SSM published now, and where it was read
    for stub in stubs:
        stub.assert_no_pending_responses()
    assert old is not None
    assert old.image_id == OLD
    saved = json.loads(path.read_text())["images"]["us-east-1/arm64"]
    assert saved == {
        "image_id": NEW,
        "name": "al2023-ami-2023.9.20260101.0-kernel-6.1-arm64",
        "parameter": ARM,
        "recorded_at": "2026-12-01T00:00:00Z",
    }
    # AND the servers launch from it (until the next refresh)
    assert server_image.resolve(server_ami="", region="us-east-1", arm64=True, path=path) == (
        NEW,
        True,
    )


def test_refresh_leaves_the_record_alone_when_the_image_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "server-ami.json"
    record(path, OLD)
    before = path.read_text()
    ssm, ec2, _ = stubbed(OLD)
    old, new = server_ami.refresh(MeshConfig.from_context({}), ssm=ssm, ec2=ec2, path=path)
    assert old is new
    assert path.read_text() == before


def test_refresh_refuses_an_image_of_the_wrong_architecture(tmp_path: Path) -> None:
    path = tmp_path / "server-ami.json"
    ssm, ec2, _ = stubbed(NEW, architecture="x86_64")
    with pytest.raises(RuntimeError, match=r"architecture x86_64.*expected an available arm64"):
        server_ami.refresh(MeshConfig.from_context({}), ssm=ssm, ec2=ec2, path=path)
    assert not path.exists()


def test_deploy_check_warns_while_nothing_is_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "server-ami.json"
    warning = server_ami.check(MeshConfig.from_context({}), path)
    assert warning is not None
    assert "us-east-1/arm64" in warning
    assert ARM in warning
    assert "make refresh-ami" in warning
    # `make deploy` goes on: the first deploy on a new account needs no record (DESIGN §2.6)
    real_check = server_ami.check
    with monkeypatch.context() as patched:
        patched.setattr(server_ami, "check", lambda config: real_check(config, path))
        assert server_ami.main(["check"]) == 0
    assert capsys.readouterr().err.startswith("warning: no Consul server AMI recorded")
    record(path, OLD)
    assert server_ami.check(MeshConfig.from_context({}), path) is None
    # an explicitly pinned image needs no record
    pinned = MeshConfig.from_context({"server_ami": NEW, "region": "eu-west-1"})
    assert server_ami.check(pinned, tmp_path / "none.json") is None


def test_the_record_is_read_per_region_and_architecture(tmp_path: Path) -> None:
    path = tmp_path / "server-ami.json"
    record(path, OLD)
    assert server_image.resolve(server_ami="", region="eu-west-1", arm64=True, path=path) == (
        "",
        False,
    )
    assert (
        server_image.resolve(server_ami="", region="us-east-1", arm64=False, path=path)[1] is False
    )
    assert server_image.resolve(server_ami=NEW, region="us-east-1", arm64=True, path=path) == (
        NEW,
        True,
    )


def test_fails_when_server_ami_is_not_an_ami_id() -> None:
    with pytest.raises(ConfigError, match=r"server_ami='latest'.*AMI ID"):
        MeshConfig.from_context({"server_ami": "latest"})


def test_the_committed_record_is_valid() -> None:
    server_image.load_record()


def test_a_recorded_image_is_a_literal_in_the_template() -> None:
    # No public SSM parameter anywhere once an image is fixed, so an unrelated deploy after
    # AWS published a new image changes nothing on the servers.
    context = {**cdk_json_context(), "server_ami": NEW}
    config = MeshConfig.from_context(context)
    stack = MeshStack(
        cdk.App(context=context), config.stack_name, config=config,
        env=cdk.Environment(region=config.region),
    )  # fmt: skip
    template = Template.from_stack(stack).to_json()
    (lt,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"]
    assert lt["Properties"]["LaunchTemplateData"]["ImageId"] == NEW
    parameters = template.get("Parameters", {}).values()
    assert not [p for p in parameters if "AWS::EC2::Image::Id" in p["Type"]]
    assert not [p for p in parameters if "ami-amazon-linux" in str(p.get("Default"))]
