"""The Consul-objects custom resource provider against the Consul HTTP double and moto.

Each test drives the provider the way the CDK Provider framework does: `on_event` once, then
`is_complete` (with on_event's result merged into the event) until it answers complete. Time is
a fake clock, so waiting for a leader or backing off never sleeps on the wall clock.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import socket
import ssl
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws
from pki import Pki, make_pki

from tests.consul_double import ConsulDouble

# The provider's modules are flat (as Lambda loads them); their names differ from the
# registrar's, so putting their directory on sys.path here cannot shadow anything.
_PROVIDER_DIR = Path(__file__).resolve().parents[2] / "lambda" / "consul_config"
if str(_PROVIDER_DIR) not in sys.path:
    sys.path.insert(0, str(_PROVIDER_DIR))
provider: ModuleType = importlib.import_module("provider")
objects: ModuleType = importlib.import_module("objects")
consul_api: ModuleType = importlib.import_module("consul_api")
# The Consul client every asset bundles (lambda/shared/, on the tests' pythonpath).
connections: ModuleType = importlib.import_module("connections")
secrets_store: ModuleType = importlib.import_module("secrets_store")

REGION = "us-east-1"
MANAGEMENT_TOKEN = "9d4f5c1e-8a77-4d0b-9f4e-3c2a1b0e7d66"
STACK_ID = (
    f"arn:aws:cloudformation:{REGION}:123456789012:stack/mesh-dev/0b1c2d3e-aaaa-bbbb-cccc-1234"
)
PLACEHOLDER = "CloudFormation-generated-placeholder!"


# ------------------------------------------------------------------------------ fixtures


@dataclass
class FakeTime:
    """Monotonic and wall clocks that only move when the code under test sleeps."""

    now: float = 1_000.0
    slept: list[float] = field(default_factory=list)
    on_sleep: Callable[[int], None] | None = None

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.slept))

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(provider, "_sleep", fake.sleep)
    monkeypatch.setattr(provider, "_clock", fake.monotonic)
    monkeypatch.setattr(provider, "_now", fake.wall)
    return fake


@pytest.fixture
def consul(consul_double_acl: ConsulDouble) -> ConsulDouble:
    # Consul ACL SecretIDs are UUIDs, and the provider treats anything else in the management
    # token secret as the fleet's not-yet-published placeholder: accept a UUID token instead.
    consul_double_acl.set_tokens([MANAGEMENT_TOKEN])
    return consul_double_acl


@dataclass
class Secrets:
    client: Any
    management: str
    ca: str
    token: str

    def value(self, arn: str) -> str:
        return str(self.client.get_secret_value(SecretId=arn)["SecretString"])

    def versions(self, arn: str) -> int:
        return len(self.client.list_secret_version_ids(SecretId=arn)["Versions"])


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[Secrets]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=REGION)
        monkeypatch.setattr(secrets_store, "_client", client)

        def create(name: str, value: str) -> str:
            return str(client.create_secret(Name=name, SecretString=value)["ARN"])

        yield Secrets(
            client=client,
            management=create("consul-management", MANAGEMENT_TOKEN),
            ca=create("consul-ca", PLACEHOLDER),
            token=create("registrar-token", PLACEHOLDER),
        )


def connection(consul: ConsulDouble, secrets: Secrets) -> dict[str, Any]:
    return {
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:framework-onEvent",
        "ConsulHttpAddr": consul.url,
        "ManagementTokenSecretArn": secrets.management,
    }


def event(
    request_type: str,
    props: dict[str, Any],
    *,
    logical_id: str = "RegistrarToken",
    physical_id: str | None = None,
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "RequestType": request_type,
        "ServiceToken": props.get("ServiceToken", ""),
        "ResponseURL": "https://cloudformation-custom-resource-response.example/presigned",
        "StackId": STACK_ID,
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": logical_id,
        "ResourceType": "Custom::ConsulObject",
        "ResourceProperties": props,
    }
    if physical_id is not None:
        body["PhysicalResourceId"] = physical_id
    if old is not None:
        body["OldResourceProperties"] = old
    return body


@dataclass
class Outcome:
    physical_id: str
    data: dict[str, Any]
    polls: int


def run(request: dict[str, Any], *, max_polls: int = 5) -> Outcome:
    """What the CDK Provider framework does with one request, until it completes."""
    started = provider.on_event(request, Context())
    merged = {**request, **started}
    for poll in range(1, max_polls + 1):
        answer = provider.is_complete(merged, Context())
        if answer["IsComplete"]:
            return Outcome(str(started["PhysicalResourceId"]), answer.get("Data", {}), poll)
    raise AssertionError(f"not complete after {max_polls} polls")


def poll_once(request: dict[str, Any]) -> dict[str, Any]:
    started = provider.on_event(request, Context())
    result: dict[str, Any] = provider.is_complete({**request, **started}, Context())
    return result


def policy_props(consul: ConsulDouble, secrets: Secrets, **over: Any) -> dict[str, Any]:
    return {
        **connection(consul, secrets),
        "ObjectType": "AclPolicy",
        "Name": "ecs-registrar",
        "Rules": 'node_prefix "ecs-task-" {\n  policy = "write"\n}\n',
        "Description": "registrar",
        **over,
    }


def token_props(consul: ConsulDouble, secrets: Secrets, **over: Any) -> dict[str, Any]:
    return {
        **connection(consul, secrets),
        "ObjectType": "AclToken",
        "Description": "ECS Anywhere registrar",
        "Policies": ["ecs-registrar"],
        "ServiceIdentities": [],
        "TokenSecretArn": secrets.token,
        **over,
    }


def entry_props(consul: ConsulDouble, secrets: Secrets, entry: dict[str, Any]) -> dict[str, Any]:
    return {**connection(consul, secrets), "ObjectType": "ConfigEntry", "Entry": json.dumps(entry)}


def consul_delete(consul: ConsulDouble, path: str) -> None:
    request = urllib.request.Request(
        consul.url + path, method="DELETE", headers={"X-Consul-Token": MANAGEMENT_TOKEN}
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 200


# ------------------------------------------------------------------------------ ACL policies


def test_policy_is_created_updated_and_deleted(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    # GIVEN a declared policy  WHEN it is created
    created = run(event("Create", policy_props(consul, secrets), logical_id="RegistrarPolicy"))
    # THEN Consul holds it, named by its physical ID, with its ID as an attribute
    (policy,) = consul.acl_policies().values()
    assert created.physical_id == "ecs-registrar"
    assert created.data == {"PolicyId": policy["ID"], "Name": "ecs-registrar"}
    assert policy["Rules"].startswith('node_prefix "ecs-task-"')

    # WHEN its rules change  THEN the same policy (same ID) carries the new rules
    new_rules = 'key_prefix "ecs-registrar/" {\n  policy = "write"\n}\n'
    updated = run(
        event(
            "Update",
            policy_props(consul, secrets, Rules=new_rules),
            logical_id="RegistrarPolicy",
            physical_id="ecs-registrar",
            old=policy_props(consul, secrets),
        )
    )
    assert updated.physical_id == "ecs-registrar"
    assert [p["Rules"] for p in consul.acl_policies().values()] == [new_rules]
    assert updated.data["PolicyId"] == policy["ID"]

    # WHEN it is deleted, twice (a retried delete)  THEN it is gone and the retry succeeds
    for _ in range(2):
        run(event("Delete", policy_props(consul, secrets), physical_id="ecs-registrar"))
    assert consul.acl_policies() == {}


def test_policy_create_retried_after_success_neither_duplicates_nor_writes(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    request = event("Create", policy_props(consul, secrets), logical_id="RegistrarPolicy")
    first = run(request)
    consul.reset_requests()
    second = run(request)
    assert second == first
    assert len(consul.acl_policies()) == 1
    assert consul.writes() == 0  # found by name, unchanged: nothing to write


def test_policy_rename_creates_the_new_name_and_cleanup_deletes_the_old(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    old = policy_props(consul, secrets)
    run(event("Create", old, logical_id="RegistrarPolicy"))
    new = policy_props(consul, secrets, Name="ecs-registrar-v2")
    renamed = run(event("Update", new, physical_id="ecs-registrar", old=old))
    # CloudFormation sees a new physical ID and deletes the old one in its cleanup phase
    assert renamed.physical_id == "ecs-registrar-v2"
    run(event("Delete", old, physical_id="ecs-registrar"))
    assert [p["Name"] for p in consul.acl_policies().values()] == ["ecs-registrar-v2"]


# ------------------------------------------------------------------------------ ACL tokens


def _create_policy(consul: ConsulDouble, secrets: Secrets, name: str = "ecs-registrar") -> None:
    run(event("Create", policy_props(consul, secrets, Name=name), logical_id=f"{name}Policy"))


def test_token_secret_id_goes_to_the_secret_and_nowhere_else(
    consul: ConsulDouble,
    secrets: Secrets,
    clock: FakeTime,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Everything the provider logs, and anything else at INFO (Lambda's level); botocore's
    # opt-in DEBUG wire logs would show any API payload and are not what is checked here.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="consul_config")
    _create_policy(consul, secrets)
    # WHEN a token is created
    outcome = run(event("Create", token_props(consul, secrets)))
    # THEN Consul has exactly one token, with the deterministic AccessorID and the policy
    (token,) = consul.acl_tokens().values()
    expected_accessor = str(uuid.uuid5(objects.ACCESSOR_NAMESPACE, f"{STACK_ID}/RegistrarToken"))
    assert token["AccessorID"] == outcome.physical_id == expected_accessor
    assert [p["Name"] for p in token["Policies"]] == ["ecs-registrar"]
    # AND the secret holds its SecretID, a fresh random UUID
    secret_id = secrets.value(secrets.token)
    assert secret_id == token["SecretID"]
    assert uuid.UUID(secret_id).version == 4
    # AND neither the SecretID nor the management token is returned or logged
    assert outcome.data == {"AccessorID": expected_accessor, "TokenSecretArn": secrets.token}
    printed = capsys.readouterr()
    everything = caplog.text + printed.out + printed.err + json.dumps(outcome.data)
    assert secret_id not in everything
    assert MANAGEMENT_TOKEN not in everything
    assert "applied" in caplog.text  # the logs are there, just without secrets


def test_token_create_retried_keeps_one_token_and_one_secret_id(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    _create_policy(consul, secrets)
    request = event("Create", token_props(consul, secrets))
    first = run(request)
    secret_id = secrets.value(secrets.token)
    versions = secrets.versions(secrets.token)
    # WHEN the framework retries the whole create (same StackId/LogicalResourceId)
    second = run(request)
    # THEN the same token is found, not duplicated, and the secret is not rewritten
    assert second.physical_id == first.physical_id
    assert len(consul.acl_tokens()) == 1
    assert secrets.value(secrets.token) == secret_id
    assert secrets.versions(secrets.token) == versions


def test_token_create_interrupted_before_the_secret_write_recovers(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _create_policy(consul, secrets)
    request = event("Create", token_props(consul, secrets))

    def lost(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Lambda timed out before PutSecretValue")

    # GIVEN a first attempt that created the token but never stored its SecretID
    with monkeypatch.context() as patch:
        patch.setattr(provider.operations, "write_token", lost)
        with pytest.raises(ConnectionError):
            run(request)
    assert secrets.value(secrets.token) == PLACEHOLDER
    # WHEN the create runs again  THEN the existing token's SecretID lands in the secret
    run(request)
    (token,) = consul.acl_tokens().values()
    assert secrets.value(secrets.token) == token["SecretID"]


@pytest.mark.parametrize("lost_path", ["/v1/acl/policy", "/v1/acl/token"])
def test_a_create_whose_answer_was_lost_adopts_what_it_created(
    consul: ConsulDouble,
    secrets: Secrets,
    clock: FakeTime,
    monkeypatch: pytest.MonkeyPatch,
    lost_path: str,
) -> None:
    if lost_path == "/v1/acl/token":
        _create_policy(consul, secrets)
    real_request = connections.ConnectionPool.request
    lost: list[str] = []

    def answer_lost_once(self: Any, method: str, target: str, **kwargs: Any) -> Any:
        answer = real_request(self, method, target, **kwargs)
        if method == "PUT" and target == lost_path and not lost:
            lost.append(target)
            raise ConnectionResetError("connection reset after Consul committed the write")
        return answer

    monkeypatch.setattr(connections.ConnectionPool, "request", answer_lost_once)
    # WHEN the create's first answer is lost and the retried create finds the object in place
    if lost_path == "/v1/acl/token":
        run(event("Create", token_props(consul, secrets)))
        # THEN the token of the first attempt is adopted, and its SecretID is the one stored
        (token,) = consul.acl_tokens().values()
        assert secrets.value(secrets.token) == token["SecretID"]
    else:
        outcome = run(event("Create", policy_props(consul, secrets)))
        (policy,) = consul.acl_policies().values()
        assert outcome.data["PolicyId"] == policy["ID"]
    assert lost == [lost_path]


def test_token_update_keeps_its_secret_id(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    _create_policy(consul, secrets)
    _create_policy(consul, secrets, name="extra-read")
    old = token_props(consul, secrets)
    created = run(event("Create", old))
    secret_id = secrets.value(secrets.token)
    # WHEN the token's description and policies change
    new = token_props(consul, secrets, Description="v2", Policies=["ecs-registrar", "extra-read"])
    updated = run(event("Update", new, physical_id=created.physical_id, old=old))
    # THEN it is the same token, with the same SecretID, now linked to both policies
    (token,) = consul.acl_tokens().values()
    assert updated.physical_id == created.physical_id == token["AccessorID"]
    assert token["SecretID"] == secret_id == secrets.value(secrets.token)
    assert token["Description"] == "v2"
    assert sorted(p["Name"] for p in token["Policies"]) == ["ecs-registrar", "extra-read"]


def test_token_deleted_out_of_band_is_recreated_on_update(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    _create_policy(consul, secrets)
    props = token_props(consul, secrets)
    created = run(event("Create", props))
    lost_secret = secrets.value(secrets.token)
    consul_delete(consul, f"/v1/acl/token/{created.physical_id}")
    # WHEN the next deployment updates it  THEN the token exists again under the same
    # AccessorID, and the secret holds the new SecretID (the old one died with the token)
    run(event("Update", {**props, "Description": "again"}, physical_id=created.physical_id))
    (token,) = consul.acl_tokens().values()
    assert token["AccessorID"] == created.physical_id
    assert secrets.value(secrets.token) == token["SecretID"] != lost_secret


def test_token_with_service_identity_sends_it_to_consul(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    props = token_props(consul, secrets, Policies=[], ServiceIdentities=["frontend"])
    run(event("Create", props, logical_id="FrontendSidecarToken"))
    (create,) = [r for r in consul.requests if r.method == "PUT" and r.path == "/v1/acl/token"]
    body = json.loads(create.body)
    assert body["ServiceIdentities"] == [{"ServiceName": "frontend"}]
    assert body["Policies"] == []


def test_token_delete_removes_it_and_tolerates_absence(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    _create_policy(consul, secrets)
    props = token_props(consul, secrets)
    created = run(event("Create", props))
    for _ in range(2):
        run(event("Delete", props, physical_id=created.physical_id))
    assert consul.acl_tokens() == {}


def test_token_needing_a_policy_that_does_not_exist_fails_clearly(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    request = event("Create", token_props(consul, secrets, Policies=["missing-policy"]))
    with pytest.raises(consul_api.ConsulError, match="missing-policy"):
        run(request)
    assert secrets.value(secrets.token) == PLACEHOLDER


# ------------------------------------------------------------------------------ config entries


PROXY_DEFAULTS = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "tcp"}}
DENY_ALL = {
    "Kind": "service-intentions",
    "Name": "*",
    "Sources": [{"Name": "*", "Action": "deny"}],
}


def test_config_entry_is_created_updated_and_deleted(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    created = run(event("Create", entry_props(consul, secrets, PROXY_DEFAULTS)))
    assert created.physical_id == "proxy-defaults/global"
    assert created.data == {"Kind": "proxy-defaults", "Name": "global"}
    assert consul.config_entries()[("proxy-defaults", "global")]["Config"] == {"protocol": "tcp"}

    http = {**PROXY_DEFAULTS, "Config": {"protocol": "http"}}
    run(
        event(
            "Update",
            entry_props(consul, secrets, http),
            physical_id=created.physical_id,
            old=entry_props(consul, secrets, PROXY_DEFAULTS),
        )
    )
    assert consul.config_entries()[("proxy-defaults", "global")]["Config"] == {"protocol": "http"}

    for _ in range(2):
        run(event("Delete", entry_props(consul, secrets, http), physical_id=created.physical_id))
    assert consul.config_entries() == {}


def test_default_deny_and_allow_intentions_land_as_declared(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    allow = {
        "Kind": "service-intentions",
        "Name": "backend",
        "Sources": [{"Name": "frontend", "Action": "allow"}],
    }
    run(event("Create", entry_props(consul, secrets, DENY_ALL), logical_id="WildcardIntentions"))
    run(event("Create", entry_props(consul, secrets, allow), logical_id="BackendIntentions"))
    entries = consul.config_entries()
    assert entries[("service-intentions", "*")]["Sources"] == DENY_ALL["Sources"]
    assert entries[("service-intentions", "backend")]["Sources"] == allow["Sources"]


def test_config_entry_rejected_by_consul_fails_the_deployment_with_its_reason(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    wrong = {**PROXY_DEFAULTS, "Name": "frontend"}  # proxy-defaults must be named "global"
    with pytest.raises(consul_api.ConsulError, match=r"only .*global.* is supported"):
        run(event("Create", entry_props(consul, secrets, wrong)))


# ------------------------------------------------------------------------------ waiting, retries


def test_waits_for_a_leader_without_writing_then_applies(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    # GIVEN a fleet that has not elected a leader yet
    consul.has_leader = False
    request = event("Create", entry_props(consul, secrets, PROXY_DEFAULTS))
    # WHEN the framework polls  THEN each poll waits a bounded time and answers "not yet"
    assert poll_once(request) == {"IsComplete": False}
    assert consul.writes() == 0
    assert 0 < sum(clock.slept) <= provider.LEADER_WAIT_PER_CALL
    # WHEN a leader is elected  THEN the next poll applies the entry
    consul.has_leader = True
    assert run(request).polls == 1
    assert ("proxy-defaults", "global") in consul.config_entries()


def test_a_leader_elected_during_one_poll_is_used_by_that_poll(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    consul.has_leader = False

    def elect_after_two_waits(sleeps: int) -> None:
        if sleeps == 2:
            consul.has_leader = True

    clock.on_sleep = elect_after_two_waits
    assert poll_once(event("Create", entry_props(consul, secrets, PROXY_DEFAULTS)))["IsComplete"]
    assert consul.count(path_prefix="/v1/status/leader") == 3


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_errors_are_retried_within_the_call(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime, status: int
) -> None:
    consul.inject(kind="status", path_prefix="/v1/acl/policy", status=status, times=2)
    outcome = run(event("Create", policy_props(consul, secrets)))
    assert outcome.polls == 1
    assert len(consul.acl_policies()) == 1
    failed = [r for r in consul.requests if r.status == status]
    assert len(failed) == 2


def test_dropped_connections_are_retried(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    consul.inject(kind="refuse", path_prefix="/v1/config", times=2)
    run(event("Create", entry_props(consul, secrets, PROXY_DEFAULTS)))
    assert ("proxy-defaults", "global") in consul.config_entries()


def test_consul_unavailable_for_the_whole_call_means_not_yet_not_failed(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    consul.inject(kind="status", path_prefix="/v1/config", status=503, times=-1)
    assert poll_once(event("Create", entry_props(consul, secrets, PROXY_DEFAULTS))) == {
        "IsComplete": False
    }
    consul.clear_faults()
    run(event("Create", entry_props(consul, secrets, PROXY_DEFAULTS)))
    assert ("proxy-defaults", "global") in consul.config_entries()


def test_a_500_that_persists_fails_after_a_few_tries(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    consul.inject(kind="status", path_prefix="/v1/config", status=500, times=-1)
    with pytest.raises(consul_api.ConsulError, match="-> 500"):
        poll_once(event("Create", entry_props(consul, secrets, PROXY_DEFAULTS)))
    assert consul.count(method="PUT", path_prefix="/v1/config") == 3


def test_secrets_still_holding_placeholders_mean_the_fleet_is_not_ready(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    # GIVEN the management token secret before the fleet's first boot published the token
    secrets.client.put_secret_value(SecretId=secrets.management, SecretString=PLACEHOLDER)
    answer = poll_once(event("Create", entry_props(consul, secrets, PROXY_DEFAULTS)))
    assert answer == {"IsComplete": False}
    assert consul.requests == []


def test_a_rejected_management_token_is_waited_out_briefly_then_reported(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    other = str(uuid.uuid4())
    secrets.client.put_secret_value(SecretId=secrets.management, SecretString=other)
    request = event("Create", entry_props(consul, secrets, PROXY_DEFAULTS))
    started = provider.on_event(request, Context())
    merged = {**request, **started}
    # Right after the election: ACL bootstrap may be in flight
    assert provider.is_complete(merged, Context()) == {"IsComplete": False}
    # Still not found long after: reported with both causes, without the token's value
    clock.now += provider.TOKEN_REJECTED_GRACE_SECONDS
    with pytest.raises(consul_api.ConsulError) as err:
        provider.is_complete(merged, Context())
    message = str(err.value)
    assert "-> 404: Supplied token does not exist" in message
    assert "has not created it yet" in message
    assert "does not hold the fleet's initial_management token" in message
    assert other not in message
    assert consul.writes() == 0


def test_a_new_leader_still_setting_up_acls_is_waited_for(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    # GIVEN a leader that has not created the initial management token yet (the double's
    # "ACLs not ready" window, agent/consul/leader.go initializeACLs): token/self answers 404
    consul.acls_not_ready_for(0.5)
    request = event("Create", entry_props(consul, secrets, PROXY_DEFAULTS))
    merged = {**request, **provider.on_event(request, Context())}
    # THEN the provider waits instead of failing the deployment
    assert provider.is_complete(merged, Context()) == {"IsComplete": False}
    assert consul.writes() == 0
    # AND applies the object once the leader accepts the token
    time.sleep(0.6)
    assert provider.is_complete(merged, Context())["IsComplete"] is True
    assert ("proxy-defaults", "global") in consul.config_entries()


def test_delete_gives_up_within_a_minute_when_consul_is_gone(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN the servers no longer answer at delete time (the drain already emptied the catalog)
    consul.stop()
    request = event("Delete", entry_props(consul, secrets, PROXY_DEFAULTS), physical_id="x/y")
    merged = {**request, **provider.on_event(request, Context())}
    assert provider.is_complete(merged, Context()) == {"IsComplete": False}
    # WHEN a minute has passed
    clock.now += 60
    # THEN the delete completes (with a warning) instead of holding the stack for 15 minutes
    with caplog.at_level(logging.WARNING):
        assert provider.is_complete(merged, Context()) == {"IsComplete": True}
    assert "gave up deleting" in caplog.text


def test_delete_gives_up_on_a_cluster_that_never_answers(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    consul.has_leader = False
    request = event("Delete", entry_props(consul, secrets, PROXY_DEFAULTS), physical_id="x/y")
    started = provider.on_event(request, Context())
    merged = {**request, **started}
    assert provider.is_complete(merged, Context()) == {"IsComplete": False}
    clock.now += provider.DELETE_GIVE_UP_SECONDS
    with caplog.at_level(logging.WARNING):
        assert provider.is_complete(merged, Context()) == {"IsComplete": True}
    assert "gave up deleting" in caplog.text


# ------------------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"ObjectType": "AclRole"}, "ObjectType='AclRole' is not one of"),
        ({"ConsulHttpAddr": "consul:8501"}, "ConsulHttpAddr='consul:8501' must look like"),
        ({"ConsulHttpAddr": "https://consul:8501"}, "property CaCertSecretArn is required"),
        ({"ManagementTokenSecretArn": "token"}, "is not a Secrets Manager secret ARN"),
        ({"Name": "bad name"}, "Name='bad name' is not a valid ACL policy name"),
    ],
)
def test_fails_when_a_property_is_invalid(
    consul: ConsulDouble, secrets: Secrets, override: dict[str, str], message: str
) -> None:
    with pytest.raises(objects.InvalidRequest, match=message):
        provider.on_event(event("Create", policy_props(consul, secrets, **override)), Context())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"ServiceIdentities": ["Front End"]}, "ServiceIdentities has 'Front End'"),
        ({"Policies": [], "ServiceIdentities": []}, "needs at least one of Policies"),
        ({"TokenSecretArn": ""}, "property TokenSecretArn is required"),
    ],
)
def test_fails_when_a_token_property_is_invalid(
    consul: ConsulDouble, secrets: Secrets, override: dict[str, Any], message: str
) -> None:
    with pytest.raises(objects.InvalidRequest, match=message):
        provider.on_event(event("Create", token_props(consul, secrets, **override)), Context())


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{not json", "property Entry is not JSON"),
        ('["a"]', "must be a JSON object"),
        ('{"Kind": "nope", "Name": "x"}', "Kind='nope' is not one of"),
        ('{"Kind": "service-defaults"}', "Name=None must be a non-empty string"),
    ],
)
def test_fails_when_a_config_entry_is_invalid(
    consul: ConsulDouble, secrets: Secrets, entry: str, message: str
) -> None:
    props = {**entry_props(consul, secrets, {}), "Entry": entry}
    with pytest.raises(objects.InvalidRequest, match=message):
        provider.on_event(event("Create", props), Context())


def test_fails_when_an_update_changes_the_object_type(
    consul: ConsulDouble, secrets: Secrets
) -> None:
    request = event(
        "Update",
        entry_props(consul, secrets, PROXY_DEFAULTS),
        physical_id="ecs-registrar",
        old=policy_props(consul, secrets),
    )
    with pytest.raises(objects.InvalidRequest, match="cannot change from AclPolicy to ConfigEntry"):
        provider.on_event(request, Context())


def test_delete_of_an_invalid_declaration_does_nothing(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime
) -> None:
    props = policy_props(consul, secrets, Name="bad name")
    outcome = run(event("Delete", props, physical_id="bad name"))
    assert outcome.physical_id == "bad name"
    assert consul.requests == []


# ------------------------------------------------------------------------------ TLS


class TlsFront:
    """TLS termination in front of the (plain HTTP) double, standing in for the servers'
    HTTPS listener behind the NLB; records the SNI each client asked for."""

    def __init__(self, pki: Pki, backend_port: int) -> None:
        self.server_names: list[str | None] = []
        context = pki.server_context()
        context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self._context = context
        self._backend = backend_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(raw,), daemon=True).start()

    def _relay(self, raw: socket.socket) -> None:
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        backend = socket.create_connection(("127.0.0.1", self._backend))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pump, args=(backend, client), daemon=True).start()
        pump(client, backend)

    def close(self) -> None:
        self._listener.close()


NLB_NAME = "consul-nlb-0123456789.elb.us-east-1.amazonaws.com"


@pytest.fixture
def tls_front(consul: ConsulDouble, secrets: Secrets, tmp_path: Path) -> Iterator[TlsFront]:
    pki = make_pki(tmp_path, NLB_NAME)
    secrets.client.put_secret_value(SecretId=secrets.ca, SecretString=pki.ca_pem)
    front = TlsFront(pki, int(consul.url.rsplit(":", 1)[1]))
    yield front
    front.close()


def _https_props(
    consul: ConsulDouble, secrets: Secrets, front: TlsFront, server_name: str
) -> dict[str, Any]:
    # The address dials 127.0.0.1 (as an NLB IP would be dialled); the certificate is checked
    # against the configured server name, not against the dialled host.
    return {
        **entry_props(consul, secrets, PROXY_DEFAULTS),
        "ConsulHttpAddr": f"https://127.0.0.1:{front.port}",
        "TlsServerName": server_name,
        "CaCertSecretArn": secrets.ca,
    }


def test_https_verifies_the_server_against_the_ca_and_the_nlb_name(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime, tls_front: TlsFront
) -> None:
    run(event("Create", _https_props(consul, secrets, tls_front, NLB_NAME)))
    assert ("proxy-defaults", "global") in consul.config_entries()
    assert set(tls_front.server_names) == {NLB_NAME}


def test_https_refuses_a_certificate_for_another_name(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime, tls_front: TlsFront
) -> None:
    props = _https_props(consul, secrets, tls_front, "impostor.example.com")
    with pytest.raises(
        consul_api.ConsulError, match=r"TLS verification of 'impostor\.example\.com'"
    ):
        run(event("Create", props))
    assert consul.requests == []


def test_https_refuses_a_server_the_ca_did_not_sign(
    consul: ConsulDouble, secrets: Secrets, clock: FakeTime, tls_front: TlsFront, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other", NLB_NAME)
    secrets.client.put_secret_value(SecretId=secrets.ca, SecretString=other.ca_pem)
    with pytest.raises(consul_api.ConsulError, match="TLS verification"):
        run(event("Create", _https_props(consul, secrets, tls_front, NLB_NAME)))
    assert consul.requests == []
