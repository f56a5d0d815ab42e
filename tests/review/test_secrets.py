"""Secrets: who can read each one and where its value ends up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.review.builder import allow, policy, ref, resource, write_assembly
from tools.review.iam import roles
from tools.review.load import load_assembly
from tools.review.nag import AckIndex, nag_review
from tools.review.secrets import Secrets, secrets


def _role(name: str, *statements: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource("AWS::IAM::Role", f"App/{name}/Resource"),
        f"{name}Policy": resource(
            "AWS::IAM::Policy",
            f"App/{name}/DefaultPolicy/Resource",
            PolicyName="p",
            PolicyDocument=policy(*statements),
            Roles=[ref(name)],
        ),
    }


def _secrets(tmp_path: Path, resources: dict[str, Any]) -> Secrets:
    assembly = load_assembly(write_assembly(tmp_path, {"App": {"Resources": resources}}))
    return secrets(assembly, roles(assembly, AckIndex(assembly, nag_review(assembly))))


def test_readers_are_roles_allowed_get_secret_value_on_it(tmp_path: Path) -> None:
    # GIVEN one role reads the token by reference, one reads every secret, one only describes
    resources = {
        "Token": resource("AWS::SecretsManager::Secret", "App/Token/Resource"),
        "Other": resource("AWS::SecretsManager::Secret", "App/Other/Resource"),
        **_role("Exec", allow("secretsmanager:GetSecretValue", ref("Token"))),
        **_role("Admin", allow("secretsmanager:*", "*")),
        **_role("Auditor", allow("secretsmanager:DescribeSecret", ref("Token"))),
    }
    # WHEN the secrets are reviewed
    found = {s.label.split("`")[1]: s for s in _secrets(tmp_path, resources).secrets}
    # THEN the token's readers are Exec (by name) and Admin (by wildcard), not the auditor
    assert [(r.principal, r.how) for r in found["Token"].readers] == [
        ("`Exec` (App/Exec/Resource)", "names this secret"),
        ("`Admin` (App/Admin/Resource)", "wildcard resource `*`"),
    ]
    assert [r.principal for r in found["Other"].readers] == ["`Admin` (App/Admin/Resource)"]


def test_injection_points_are_ecs_secrets_lambda_environment_and_other_references(
    tmp_path: Path,
) -> None:
    token_field = {"Fn::Join": ["", [ref("Token"), ":token::"]]}
    resources = {
        "Token": resource("AWS::SecretsManager::Secret", "App/Token/Resource"),
        "Task": resource(
            "AWS::ECS::TaskDefinition",
            "App/Task/Resource",
            ContainerDefinitions=[
                {
                    "Name": "app",
                    "Secrets": [{"Name": "CONSUL_HTTP_TOKEN", "ValueFrom": token_field}],
                }
            ],
        ),
        "Fn": resource(
            "AWS::Lambda::Function",
            "App/Fn/Resource",
            Environment={"Variables": {"TOKEN_ARN": ref("Token"), "OTHER": "x"}},
        ),
        "Setup": resource("Custom::Setup", "App/Setup/Default", TokenArn=ref("Token")),
        "Reader": resource("AWS::IAM::Role", "App/Reader/Resource"),
        **_role("Exec", allow("secretsmanager:GetSecretValue", ref("Token"))),
    }
    [token] = _secrets(tmp_path, resources).secrets
    assert token.injections == [
        "task definition `Task` (App/Task/Resource), container `app`, "
        "as environment `CONSUL_HTTP_TOKEN`",
        "function `Fn` (App/Fn/Resource), environment `TOKEN_ARN` holds its ARN "
        "(the function reads the value at run time)",
        "`Setup` (App/Setup/Default) (Custom::Setup) at `Properties.TokenArn`",
    ]


def test_dynamic_references_are_listed_apart(tmp_path: Path) -> None:
    resources = {
        "Db": resource(
            "AWS::RDS::DBInstance",
            "App/Db/Resource",
            MasterUserPassword="{{resolve:secretsmanager:db-password:SecretString:password}}",
        )
    }
    found = _secrets(tmp_path, resources)
    assert found.secrets == []
    assert found.dynamic_references == ["`Db` (App/Db/Resource) at `Properties.MasterUserPassword`"]
