"""Secrets: who can read or write each one, where its value ends up, what stays unresolved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.review.builder import allow, getatt, policy, ref, resource, write_assembly
from tools.review.iam import roles
from tools.review.load import load_assembly
from tools.review.nag import AckIndex, nag_review
from tools.review.secrets import Access, Secrets, secrets


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


def _who(accesses: list[Access]) -> list[tuple[str, str]]:
    return [(a.principal.logical_id if a.principal else a.principal_text, a.how) for a in accesses]


def _token(secret_property: str = "TokenSecretArn") -> dict[str, Any]:
    """A Consul token custom resource that is told which secret to fill."""
    return resource(
        "Custom::ConsulAclToken",
        "App/Token/Default",
        ServiceToken=getatt("Provider", "Arn"),
        **{secret_property: ref("TokenSecret")},
    )


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
    found = {s.res.logical_id: s for s in _secrets(tmp_path, resources).secrets}
    # THEN the token's readers are Exec (by name) and Admin (by wildcard), not the auditor
    assert _who(found["Token"].readers) == [("Exec", "names it"), ("Admin", "wildcard *")]
    assert _who(found["Other"].readers) == [("Admin", "wildcard *")]
    # ... and Admin's secretsmanager:* also makes it a writer of both
    assert _who(found["Token"].writers) == [("Admin", "wildcard *")]
    assert "PutSecretValue" in found["Token"].writers[0].actions


def test_reader_through_a_custom_resource_output_is_the_secret_it_echoes(tmp_path: Path) -> None:
    # GIVEN a role reads `Fn::GetAtt [Token, TokenSecretArn]`, and the Token custom resource
    # was given the secret as its TokenSecretArn property (its provider returns it unchanged)
    resources = {
        "TokenSecret": resource("AWS::SecretsManager::Secret", "App/TokenSecret/Resource"),
        "Token": _token(),
        **_role(
            "Registrar", allow("secretsmanager:GetSecretValue", getatt("Token", "TokenSecretArn"))
        ),
        "Function": resource(
            "AWS::Lambda::Function",
            "App/Function/Resource",
            Environment={"Variables": {"TOKEN_ARN": getatt("Token", "TokenSecretArn")}},
        ),
    }
    # WHEN the secrets are reviewed
    [secret] = _secrets(tmp_path, resources).secrets
    # THEN the role is a reader and the function an injection point, both through the token
    assert _who(secret.readers) == [("Registrar", "names it via Token.TokenSecretArn")]
    assert [(i.where.logical_id, i.kind, i.via) for i in secret.injections] == [
        ("Token", "property", ()),
        ("Function", "lambda-environment", ("Token.TokenSecretArn",)),
    ]


def test_a_custom_resource_output_it_cannot_follow_is_unresolved_not_no_reader(
    tmp_path: Path,
) -> None:
    # GIVEN the token resource is not told the secret (its provider creates it): the output
    # `TokenSecretArn` names a secret only the provider knows
    resources = {
        "TokenSecret": resource("AWS::SecretsManager::Secret", "App/TokenSecret/Resource"),
        "Token": _token(secret_property="SecretArnOfTheToken"),
        **_role(
            "Registrar", allow("secretsmanager:GetSecretValue", getatt("Token", "TokenSecretArn"))
        ),
    }
    found = _secrets(tmp_path, resources)
    # THEN the grant is listed as unresolved, with the reason, for the reviewer to settle
    [unresolved] = found.unresolved
    assert unresolved.principal is not None
    assert unresolved.principal.logical_id == "Registrar"
    assert unresolved.actions == ("GetSecretValue",)
    assert unresolved.value == "<Token.TokenSecretArn>"
    assert "custom resource output Token.TokenSecretArn" in unresolved.why[0]


def test_parameters_and_secrets_of_other_templates_are_unresolved(tmp_path: Path) -> None:
    resources = {
        **_role(
            "Reader",
            allow("secretsmanager:GetSecretValue", ref("SecretParam")),
            allow(
                "secretsmanager:GetSecretValue",
                "arn:aws:secretsmanager:us-east-1:111111111111:secret:elsewhere-AbCdEf",
            ),
            allow("s3:GetObject", "arn:aws:s3:::bucket/*"),
        ),
    }
    assembly = load_assembly(
        write_assembly(
            tmp_path,
            {"App": {"Parameters": {"SecretParam": {"Type": "String"}}, "Resources": resources}},
        )
    )
    found = secrets(assembly, roles(assembly, AckIndex(assembly, nag_review(assembly))))
    # THEN both secret grants are unresolved (the S3 grant is not a secret grant at all)
    assert [(u.value, u.why) for u in found.unresolved] == [
        ("<SecretParam>", ("template parameter SecretParam of App",)),
        (
            "arn:aws:secretsmanager:us-east-1:111111111111:secret:elsewhere-AbCdEf",
            (
                "a secret ARN no template of this assembly names "
                "(another stack's, or created by hand)",
            ),
        ),
    ]


def test_writers_are_roles_that_can_change_the_value(tmp_path: Path) -> None:
    resources = {
        "Ca": resource("AWS::SecretsManager::Secret", "App/Ca/Resource"),
        **_role(
            "Server",
            allow(
                [
                    "secretsmanager:GetSecretValue",
                    "secretsmanager:PutSecretValue",
                    "secretsmanager:UpdateSecret",
                ],
                ref("Ca"),
            ),
        ),
        **_role("Client", allow("secretsmanager:GetSecretValue", ref("Ca"))),
    }
    [ca] = _secrets(tmp_path, resources).secrets
    assert _who(ca.readers) == [("Server", "names it"), ("Client", "names it")]
    assert [(a.principal.logical_id, a.actions) for a in ca.writers if a.principal] == [
        ("Server", ("PutSecretValue", "UpdateSecret"))
    ]


def test_resource_policy_principals_read_too(tmp_path: Path) -> None:
    resources = {
        "Token": resource("AWS::SecretsManager::Secret", "App/Token/Resource"),
        "TokenPolicy": resource(
            "AWS::SecretsManager::ResourcePolicy",
            "App/Token/Policy/Resource",
            SecretId=ref("Token"),
            ResourcePolicy=policy(
                allow(
                    "secretsmanager:GetSecretValue",
                    "*",
                    Principal={"AWS": "arn:aws:iam::222222222222:root"},
                )
            ),
        ),
    }
    [token] = _secrets(tmp_path, resources).secrets
    assert _who(token.readers) == [
        ("account 222222222222 (its IAM policies decide)", "resource policy")
    ]


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
    assert [(i.where.logical_id, i.kind, i.detail) for i in token.injections] == [
        ("Task", "ecs-secret", "container app, environment CONSUL_HTTP_TOKEN"),
        ("Fn", "lambda-environment", "TOKEN_ARN (its ARN)"),
        ("Setup", "property", "Properties.TokenArn"),
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
    assert [(d.where.logical_id, d.path) for d in found.dynamic_references] == [
        ("Db", "Properties.MasterUserPassword")
    ]
