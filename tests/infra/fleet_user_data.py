"""The Consul fleet's synthesized user data, as the shell text an instance would run.

CloudFormation fills the template's tokens (region, stack name, the asset bucket, ARNs) at
deploy time; here each becomes a plain placeholder word, so the text can be linted, searched
and run in a sandbox by the tests.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from typing import Any

import aws_cdk as cdk
from aws_cdk import assertions

from mesh_stack.config import MeshConfig
from mesh_stack.consul_fleet import ConsulFleet
from mesh_stack.keys import Keys
from mesh_stack.network import Network
from tests.conftest import cdk_json_context

REGION = "us-east-1"
STACK_NAME = "FleetBootTest"


def placeholder(token: Any) -> str:
    """A deploy-time value as one shell word: `tok-<logical id or pseudo parameter>`."""
    if isinstance(token, dict) and "Ref" in token:
        ref = str(token["Ref"])
        return {"AWS::Region": REGION, "AWS::StackName": STACK_NAME}.get(ref, f"tok-{ref}")
    if isinstance(token, dict) and "Fn::GetAtt" in token:
        return f"tok-{token['Fn::GetAtt'][0]}-{token['Fn::GetAtt'][1]}"
    return "tok-" + re.sub(r"[^A-Za-z0-9]+", "-", json.dumps(token, sort_keys=True)).strip("-")


def render(template: dict[str, Any]) -> str:
    """The launch template's user data with every token replaced by a placeholder."""
    (launch_template,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"
    ]
    user_data = launch_template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    if isinstance(user_data, str):
        return user_data
    separator, parts = user_data["Fn::Join"]
    return str(separator).join(p if isinstance(p, str) else placeholder(p) for p in parts)


@functools.cache
def fleet_template() -> dict[str, Any]:
    """The template of a default fleet in its own stack (synthesized once per session)."""
    app = cdk.App(context=cdk_json_context(), outdir=tempfile.mkdtemp(prefix="fleet-boot-"))
    stack = cdk.Stack(app, STACK_NAME, env=cdk.Environment(region=REGION))
    config = MeshConfig.from_context({})
    keys = Keys(stack, "Keys")
    vpc = Network(stack, "Network", config=config, log_key=keys.key).vpc
    ConsulFleet(
        stack, "ConsulFleet", vpc=vpc, consul_version="1.21.4", image_id="ami-0123456789abcdef0"
    )
    template: dict[str, Any] = assertions.Template.from_stack(stack).to_json()
    return template


def user_data_text() -> str:
    return render(fleet_template())
