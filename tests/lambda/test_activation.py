"""The SSM activation custom resource: the code goes to Secrets Manager and nowhere else."""

from __future__ import annotations

import datetime
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from asset_modules import load

from tests.fake_clock import FakeClock, patch_clock

ROOT = Path(__file__).resolve().parents[2]
CODE = "Fjz3/sZfSvv78EXAMPLEcode"
FIRST = "e488f2f6-e686-4afb-8a04-ef6dfEXAMPLE"
SECOND = "0b6e6a6c-1d2e-4f00-9a51-2c7f3EXAMPLE"


handler = load("activation", "handler")


class ClientError(Exception):
    """Shaped like botocore's: the handler reads `response["Error"]["Code"]` and `Message`."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code, "Message": message or code}}


# What SSM answers while IAM has not propagated the new host role yet
# (hashicorp/terraform-provider-aws#27952).
PROPAGATING = "Nonexistent role or missing ssm service principal in trust policy"


class FakeSsm:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.missing: set[str] = set()
        self.failures: list[Exception] = []  # raised by the next create_activation calls

    def create_activation(self, **kwargs: Any) -> dict[str, Any]:
        if self.failures:
            raise self.failures.pop(0)
        self.created.append(kwargs)
        return {"ActivationId": self.ids.pop(0), "ActivationCode": CODE}

    def delete_activation(self, **kwargs: Any) -> dict[str, Any]:
        if kwargs["ActivationId"] in self.missing:
            raise ClientError("InvalidActivation")
        self.deleted.append(kwargs["ActivationId"])
        return {}


class FakeSecrets:
    def __init__(self, value: str = "random-initial-value", fail: bool = False) -> None:
        self.value = value
        self.fail = fail

    def put_secret_value(self, **kwargs: Any) -> dict[str, Any]:
        if self.fail:
            raise ClientError("AccessDeniedException")
        self.value = kwargs["SecretString"]
        return {}

    def get_secret_value(self, **kwargs: Any) -> dict[str, Any]:
        return {"SecretString": self.value}


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_ARN", "arn:aws:secretsmanager:us-east-1:1:secret:activation")
    monkeypatch.setenv("ROLE_NAME", "EcsAnywhereHostRole")
    monkeypatch.setenv("CLUSTER_NAME", "mesh")
    monkeypatch.setenv("REGISTRATION_LIMIT", "10")
    monkeypatch.setenv("EXPIRY_DAYS", "7")


class _Responses(http.server.BaseHTTPRequestHandler):
    """CloudFormation's pre-signed response URL: records every PUT body."""

    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        self.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def response_url() -> Iterator[str]:
    _Responses.bodies.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Responses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/response"
    server.shutdown()
    server.server_close()


def cfn_event(request: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "RequestType": request,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:1:stack/Test/1",
        "RequestId": "req-1",
        "LogicalResourceId": "Activation",
        "ResourceProperties": {"RegistrationLimit": "10", "ExpiryDays": "7", "Role": "r"},
        **extra,
    }


def run(
    event: dict[str, Any], ssm: FakeSsm, secrets: FakeSecrets, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    monkeypatch.setattr(handler, "_clients", lambda: (ssm, secrets))
    result: dict[str, str] = handler.handler(event, None)
    return result


def test_create_writes_the_code_to_the_secret_and_only_the_id_to_cloudformation(
    response_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a stack creating the activation
    ssm, secrets = FakeSsm([FIRST]), FakeSecrets()
    caplog.set_level(logging.INFO)
    # WHEN CloudFormation sends Create
    before = datetime.datetime.now(datetime.UTC)
    run(cfn_event("Create", response_url), ssm, secrets, monkeypatch)
    # THEN the activation lasts the configured days for the configured number of hosts
    (created,) = ssm.created
    assert created["IamRole"] == "EcsAnywhereHostRole"
    assert created["RegistrationLimit"] == 10
    assert before + datetime.timedelta(days=7) <= created["ExpirationDate"]
    # AND the secret holds "<id> <code>" for the registration command
    assert secrets.value == f"{FIRST} {CODE}"
    # AND CloudFormation learns the ID but never the code, nor does the log
    (body,) = _Responses.bodies
    assert body["Status"] == "SUCCESS"
    assert body["PhysicalResourceId"] == FIRST
    assert body["Data"] == {"ActivationId": FIRST}
    assert CODE not in json.dumps(body)
    assert CODE not in caplog.text


def test_an_activation_that_cannot_be_stored_is_taken_back(
    response_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssm, secrets = FakeSsm([FIRST]), FakeSecrets(fail=True)
    run(cfn_event("Create", response_url), ssm, secrets, monkeypatch)
    assert ssm.deleted == [FIRST]
    (body,) = _Responses.bodies
    assert body["Status"] == "FAILED"
    assert "AccessDeniedException" in body["Reason"]
    assert CODE not in json.dumps(body)


def cloudformation_update(
    response_url: str, ssm: FakeSsm, secrets: FakeSecrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Update of the limit, as CloudFormation runs it: when the handler answers with a new
    physical ID, CloudFormation later sends Delete for the old one (replacement cleanup)."""
    old = {"RegistrationLimit": "5", "ExpiryDays": "7", "Role": "r"}
    event = cfn_event("Update", response_url, PhysicalResourceId=FIRST, OldResourceProperties=old)
    run(event, ssm, secrets, monkeypatch)
    answered = _Responses.bodies[-1]["PhysicalResourceId"]
    if answered != FIRST:
        cleanup = cfn_event("Delete", response_url, PhysicalResourceId=FIRST)
        cleanup["ResourceProperties"] = old
        run(cleanup, ssm, secrets, monkeypatch)


def test_update_with_new_settings_leaves_one_usable_activation_in_the_secret(
    response_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an activation created with a limit of 5
    ssm, secrets = FakeSsm([SECOND]), FakeSecrets(f"{FIRST} {CODE}")
    # WHEN the operator raises the limit and CloudFormation runs the update to the end
    cloudformation_update(response_url, ssm, secrets, monkeypatch)
    # THEN the secret holds the new activation, with the new limit, and it is still valid
    assert secrets.value == f"{SECOND} {CODE}"
    assert ssm.created[-1]["RegistrationLimit"] == 10
    assert SECOND not in ssm.deleted
    # AND the old one was revoked
    assert ssm.deleted == [FIRST]
    assert all(body["Status"] == "SUCCESS" for body in _Responses.bodies)


@pytest.mark.parametrize(
    "old",
    [
        # A stack deployed before ServiceTimeout was set on the resource
        {"ServiceToken": "arn:aws:lambda:us-east-1:1:function:a", "RegistrationLimit": "10",
         "ExpiryDays": "7", "Role": "r"},
        # The function was replaced (a new ServiceToken), the activation's settings were not
        {"ServiceToken": "arn:aws:lambda:us-east-1:1:function:old", "ServiceTimeout": "300",
         "RegistrationLimit": "10", "ExpiryDays": "7", "Role": "r"},
    ],
)  # fmt: skip
def test_an_update_that_changes_only_framework_properties_keeps_the_activation(
    response_url: str, monkeypatch: pytest.MonkeyPatch, old: dict[str, str]
) -> None:
    # GIVEN an activation in use
    ssm, secrets = FakeSsm([SECOND]), FakeSecrets(f"{FIRST} {CODE}")
    # WHEN a stack update adds ServiceTimeout (or replaces the function) but keeps the settings
    event = cfn_event("Update", response_url, PhysicalResourceId=FIRST, OldResourceProperties=old)
    event["ResourceProperties"] = {
        "ServiceToken": "arn:aws:lambda:us-east-1:1:function:a",
        "ServiceTimeout": "300",
        "RegistrationLimit": "10",
        "ExpiryDays": "7",
        "Role": "r",
    }
    run(event, ssm, secrets, monkeypatch)
    # THEN the activation is neither reissued nor revoked
    assert ssm.created == []
    assert ssm.deleted == []
    assert secrets.value == f"{FIRST} {CODE}"
    (body,) = _Responses.bodies
    assert (body["Status"], body["PhysicalResourceId"]) == ("SUCCESS", FIRST)
    assert body["Data"] == {"ActivationId": FIRST}


@pytest.mark.parametrize("changed", ["RegistrationLimit", "ExpiryDays", "Role"])
def test_an_update_of_any_setting_reissues_the_activation(
    response_url: str, monkeypatch: pytest.MonkeyPatch, changed: str
) -> None:
    ssm, secrets = FakeSsm([SECOND]), FakeSecrets(f"{FIRST} {CODE}")
    old = {"RegistrationLimit": "10", "ExpiryDays": "7", "Role": "r", changed: "3"}
    event = cfn_event("Update", response_url, PhysicalResourceId=FIRST, OldResourceProperties=old)
    run(event, ssm, secrets, monkeypatch)
    assert secrets.value == f"{SECOND} {CODE}"
    assert ssm.deleted == [FIRST]


def test_stack_deletion_after_an_update_revokes_the_current_activation(
    response_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssm, secrets = FakeSsm([SECOND]), FakeSecrets(f"{FIRST} {CODE}")
    cloudformation_update(response_url, ssm, secrets, monkeypatch)
    ssm.missing.add(FIRST)  # revoked by the update
    physical = _Responses.bodies[-1]["PhysicalResourceId"]
    run(cfn_event("Delete", response_url, PhysicalResourceId=physical), ssm, secrets, monkeypatch)
    assert SECOND in ssm.deleted
    assert _Responses.bodies[-1]["Status"] == "SUCCESS"


def test_delete_revokes_the_activation_and_a_reissued_one(
    response_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an operator reissued (SECOND) after CloudFormation created FIRST, which expired
    ssm, secrets = FakeSsm([]), FakeSecrets(f"{SECOND} {CODE}")
    ssm.missing.add(FIRST)
    # WHEN the stack is deleted
    run(cfn_event("Delete", response_url, PhysicalResourceId=FIRST), ssm, secrets, monkeypatch)
    # THEN both are gone and the delete succeeds
    assert ssm.deleted == [SECOND]
    assert _Responses.bodies[0]["Status"] == "SUCCESS"


def test_delete_after_a_failed_create_succeeds_without_calls(
    response_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssm, secrets = FakeSsm([]), FakeSecrets()
    run(
        cfn_event("Delete", response_url, PhysicalResourceId="Activation"),
        ssm,
        secrets,
        monkeypatch,
    )
    assert ssm.deleted == []
    assert _Responses.bodies[0]["Status"] == "SUCCESS"


def test_reissue_replaces_the_secret_and_revokes_the_previous_activation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ssm, secrets = FakeSsm([SECOND]), FakeSecrets(f"{FIRST} {CODE}")
    result = run({"action": "reissue"}, ssm, secrets, monkeypatch)
    assert result == {"ActivationId": SECOND}
    assert secrets.value == f"{SECOND} {CODE}"
    assert ssm.deleted == [FIRST]


def test_fails_when_the_expiry_exceeds_what_ssm_allows(
    response_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssm, secrets = FakeSsm([FIRST]), FakeSecrets()
    event = cfn_event("Create", response_url)
    event["ResourceProperties"]["ExpiryDays"] = "45"
    run(event, ssm, secrets, monkeypatch)
    (body,) = _Responses.bodies
    assert body["Status"] == "FAILED"
    assert "ExpiryDays must be 1..30 (SSM allows at most 30), got 45" in body["Reason"]
    assert ssm.created == []


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return patch_clock(monkeypatch, handler)


def test_create_waits_for_the_new_host_role_to_reach_ssm(
    response_url: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    # GIVEN SSM does not see the host role CloudFormation just created, twice
    ssm, secrets = FakeSsm([FIRST]), FakeSecrets()
    ssm.failures = [ClientError("ValidationException", PROPAGATING) for _ in range(2)]
    # WHEN CloudFormation sends Create
    run(cfn_event("Create", response_url), ssm, secrets, monkeypatch)
    # THEN the handler retried with backoff and the activation was created
    assert clock.sleeps == [2.0, 4.0]
    assert _Responses.bodies[0]["Status"] == "SUCCESS"
    assert secrets.value == f"{FIRST} {CODE}"


def test_create_gives_up_when_the_role_never_appears(
    response_url: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    ssm, secrets = FakeSsm([FIRST]), FakeSecrets()
    ssm.failures = [ClientError("ValidationException", PROPAGATING) for _ in range(50)]
    run(cfn_event("Create", response_url), ssm, secrets, monkeypatch)
    (body,) = _Responses.bodies
    assert body["Status"] == "FAILED"
    assert "ClientError" in body["Reason"]
    assert clock.sleeps[:4] == [2.0, 4.0, 8.0, 16.0]
    assert 60 <= sum(clock.sleeps) <= handler.ROLE_PROPAGATION_SECONDS


def test_create_fails_at_once_on_any_other_refusal(
    response_url: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    ssm, secrets = FakeSsm([FIRST]), FakeSecrets()
    ssm.failures = [ClientError("ValidationException", "RegistrationLimit must be <= 1000")]
    run(cfn_event("Create", response_url), ssm, secrets, monkeypatch)
    assert _Responses.bodies[0]["Status"] == "FAILED"
    assert clock.sleeps == []
