"""The first page's building blocks: short names, tables that fit, and a stable JSON twin."""

from __future__ import annotations

import json
from pathlib import Path

from tests.review.builder import allow, getatt, policy, ref, resource, write_assembly
from tools.review.collect import build_review
from tools.review.markdown import abridge, table
from tools.review.model import Res, brace_join, short_names
from tools.review.twin import render_json


def _res(path: str, kind: str = "AWS::IAM::Role") -> Res:
    return Res("App", path.replace("/", "") + "ABCD1234", f"App/{path}", kind)


def test_short_names_keep_only_the_segments_that_tell_resources_apart() -> None:
    drain = _res("Reconciler/Drain/Function/ServiceRole/Resource")
    passing = _res("Reconciler/Pass/Function/ServiceRole/Resource")
    registrar = _res("Registrar/Function/ServiceRole/Resource")
    backend = _res("Demo/Backend/TaskDefinition/ExecutionRole/Resource")
    frontend = _res("Demo/Frontend/TaskDefinition/ExecutionRole/Resource")
    fleet = _res("ConsulFleet/Role/Resource")
    key = _res("Keys/Key/Resource", "AWS::KMS::Key")
    names = short_names([drain, passing, registrar, backend, frontend, fleet, key])
    assert [names[r] for r in (drain, passing, registrar, backend, frontend, fleet, key)] == [
        "Drain/Function",
        "Pass/Function",
        "Registrar/Function",
        "Backend/ExecutionRole",
        "Frontend/ExecutionRole",
        "ConsulFleet",
        "Keys/Key",  # "Key" alone would only repeat the type
    ]
    assert brace_join([names[drain], names[passing], names[registrar], names[fleet]]) == (
        "ConsulFleet, {Drain,Pass,Registrar}/Function"
    )


def test_a_row_wider_than_the_page_wraps_into_continuation_rows() -> None:
    readers = ", ".join(f"Reader{index}/Function" for index in range(8))
    lines = table(("Secret", "Read by"), [("CaCertificate", readers)], width=60)
    assert all(len(line) <= 60 for line in lines)
    assert lines[2].startswith("| CaCertificate | Reader0/Function,")
    assert all(line.startswith("|   | Reader") for line in lines[3:])
    assert " ".join(line.split(" | ")[1].rstrip(" |") for line in lines[2:]) == readers


def test_abridge_cuts_at_a_word_and_says_so() -> None:
    assert abridge("short enough", 20) == "short enough"
    assert abridge("only container instances of this cluster", 25) == "only container instances…"


def test_review_json_does_not_depend_on_template_order(tmp_path: Path) -> None:
    resources = {
        "Token": resource("AWS::SecretsManager::Secret", "App/Token/Resource"),
        "Role": resource("AWS::IAM::Role", "App/Role/Resource"),
        "RolePolicy": resource(
            "AWS::IAM::Policy",
            "App/Role/DefaultPolicy/Resource",
            PolicyName="p",
            PolicyDocument=policy(
                allow("secretsmanager:GetSecretValue", ref("Token")),
                allow("kms:Decrypt", getatt("Key", "Arn")),
            ),
            Roles=[ref("Role")],
        ),
        "Key": resource("AWS::KMS::Key", "App/Key/Resource", KeyPolicy=policy()),
        "Sg": resource(
            "AWS::EC2::SecurityGroup",
            "App/Sg/Resource",
            GroupDescription="x",
            SecurityGroupIngress=[
                {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": "10.1.0.0/16"},
                {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "CidrIp": "10.2.0.0/16"},
            ],
        ),
    }
    reordered = dict(reversed(list(resources.items())))
    reordered["Sg"] = json.loads(json.dumps(resources["Sg"]))
    reordered["Sg"]["Properties"]["SecurityGroupIngress"].reverse()
    first = build_review(
        write_assembly(tmp_path / "a", {"App": {"Resources": resources}}), linter=None
    )
    second = build_review(
        write_assembly(tmp_path / "b", {"App": {"Resources": reordered}}), linter=None
    )
    one, two = json.loads(render_json(first)), json.loads(render_json(second))
    one.pop("assembly"), two.pop("assembly")
    assert one == two
    [secret] = one["secrets"]["secrets"]
    assert [r["principal"]["logical_id"] for r in secret["readers"]] == ["Role"]
