"""Custom resource: the SSM activation ECS Anywhere hosts register with.

CloudFormation has no resource for an SSM activation, and its code is a credential: it must
reach the operator without passing through the template, a stack output, CloudFormation's
response data or a log line. So this function creates the activation and writes
`"<activation-id> <activation-code>"` straight into a Secrets Manager secret; CloudFormation
only ever sees the activation ID.

Events:
- CloudFormation Create: a new activation; its ID becomes the physical ID, for good.
- CloudFormation Update (the limit, expiry or role changed; nothing else counts, see SETTINGS):
  a new activation replaces the previous one in the secret and the previous one is revoked
  here, like a reissue. The physical ID is kept on purpose: a new one would make CloudFormation
  send Delete for the old ID afterwards, and that Delete, seeing the secret name another
  activation, would revoke the new one too (and so would an update rollback).
- CloudFormation Delete: delete the activation (already registered hosts stay registered).
- `{"action": "reissue"}` invoked by an operator: a fresh activation when the old one expired
  or was used up, replacing the secret's value and deleting the previous activation.

IAM is eventually consistent: right after CloudFormation created the host role, SSM may not see
it yet, and CreateActivation fails with ValidationException "Nonexistent role or missing ssm
service principal in trust policy" (hashicorp/terraform-provider-aws#27952, labelled
eventual-consistency; the same call succeeds moments later). That error is retried with backoff
for up to ROLE_PROPAGATION_SECONDS; any other error fails at once.

The same function serves a second resource type, `Custom::EcsAnywhereTeardown` (teardown.py):
it deregisters the cluster's hosts before the cluster is deleted. Both share the
CloudFormation response below.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

import teardown

logger = logging.getLogger()
logger.setLevel(logging.INFO)

TEARDOWN_TYPE = "Custom::EcsAnywhereTeardown"
# The properties that define the activation. An Update compares only these: CloudFormation
# also passes ServiceToken (and ServiceTimeout, once set) in ResourceProperties, and a stack
# update that only adds ServiceTimeout or replaces the function must not reissue the
# activation (and revoke the one operators are using).
SETTINGS = ("RegistrationLimit", "ExpiryDays", "Role")
ROLE_PROPAGATION_SECONDS = 90.0
_PROPAGATION_HINTS = ("nonexistent role", "missing ssm service principal")

# Replaced by tests with a fake clock, so no test sleeps on wall time.
_sleep: Callable[[float], None] = time.sleep
_clock: Callable[[], float] = time.monotonic


class Ssm(Protocol):
    def create_activation(self, **kwargs: Any) -> dict[str, Any]: ...
    def delete_activation(self, **kwargs: Any) -> dict[str, Any]: ...


class Secrets(Protocol):
    def put_secret_value(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_secret_value(self, **kwargs: Any) -> dict[str, Any]: ...


def _clients() -> tuple[Ssm, Secrets]:
    import boto3  # noqa: PLC0415 (only the Lambda runtime needs it; tests inject stubs)

    return boto3.client("ssm"), boto3.client("secretsmanager")


def _teardown_clients() -> tuple[teardown.Ecs, teardown.Ssm]:
    import boto3  # noqa: PLC0415 (only the Lambda runtime needs it; tests inject stubs)
    from botocore.config import Config  # noqa: PLC0415

    # Short timeouts so a hung call cannot eat the teardown's deadline; standard retries back
    # off on ThrottlingException; one pooled connection per worker thread.
    config = Config(
        connect_timeout=5,
        read_timeout=20,
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=teardown.WORKERS,
    )
    return boto3.client("ecs", config=config), boto3.client("ssm", config=config)


def _time_left(context: Any) -> teardown.TimeLeft:
    """Seconds until the Lambda's deadline (unlimited outside Lambda)."""
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return lambda: math.inf
    return lambda: float(context.get_remaining_time_in_millis()) / 1000


def _error(exc: Exception) -> tuple[str, str]:
    """(code, message) of a botocore ClientError (or the tests' stand-in)."""
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", exc))


def _create_activation(ssm: Ssm, **request: Any) -> dict[str, Any]:
    """CreateActivation, retried while SSM cannot see the (new) host role yet."""
    deadline = _clock() + ROLE_PROPAGATION_SECONDS
    pause = 2.0
    while True:
        try:
            return ssm.create_activation(**request)
        except Exception as exc:
            code, message = _error(exc)
            propagating = code == "ValidationException" and any(
                hint in message.lower() for hint in _PROPAGATION_HINTS
            )
            if not propagating or _clock() + pause > deadline:
                raise
            _log("host role not visible to SSM yet: retrying", wait_seconds=pause, error=message)
            _sleep(pause)
            pause = min(pause * 2, 20.0)


def _log(message: str, **fields: Any) -> None:
    logger.info(json.dumps({"msg": message, **fields}))


def _settings(props: dict[str, Any]) -> tuple[int, int]:
    limit, days = int(props["RegistrationLimit"]), int(props["ExpiryDays"])
    if not 1 <= limit <= 1000:
        raise ValueError(f"RegistrationLimit must be 1..1000, got {limit}")
    if not 1 <= days <= 30:
        raise ValueError(f"ExpiryDays must be 1..30 (SSM allows at most 30), got {days}")
    return limit, days


def issue(
    ssm: Ssm, secrets: Secrets, *, limit: int, days: int, now: datetime.datetime | None = None
) -> str:
    """Create an activation, store id and code in the secret; returns the activation ID."""
    now = now or datetime.datetime.now(datetime.UTC)
    response = _create_activation(
        ssm,
        Description=f"ECS Anywhere hosts of cluster {os.environ['CLUSTER_NAME']}",
        DefaultInstanceName=os.environ["CLUSTER_NAME"],
        IamRole=os.environ["ROLE_NAME"],
        RegistrationLimit=limit,
        ExpirationDate=now + datetime.timedelta(days=days),
    )
    activation_id = str(response["ActivationId"])
    try:
        secrets.put_secret_value(
            SecretId=os.environ["SECRET_ARN"],
            SecretString=f"{activation_id} {response['ActivationCode']}",
        )
    except Exception:
        # An activation nobody can read is useless and still valid: take it back.
        ssm.delete_activation(ActivationId=activation_id)
        raise
    _log("activation issued", activation_id=activation_id, limit=limit, expiry_days=days)
    return activation_id


def revoke(ssm: Ssm, activation_id: str) -> None:
    """Delete an activation; one that expired or is already gone needs nothing more."""
    try:
        ssm.delete_activation(ActivationId=activation_id)
    except Exception as exc:  # botocore's ClientError, or the stub's
        if _error(exc)[0] not in ("InvalidActivation", "InvalidActivationId"):
            raise
    _log("activation deleted", activation_id=activation_id)


def current_activation(secrets: Secrets) -> str | None:
    """The activation ID the secret holds, if it holds one (it starts as a random string)."""
    try:
        value = secrets.get_secret_value(SecretId=os.environ["SECRET_ARN"])["SecretString"]
    except Exception as exc:
        if _error(exc)[0] == "ResourceNotFoundException":
            return None
        raise
    parts = str(value).split()
    return parts[0] if len(parts) == 2 and parts[0].count("-") == 4 else None


def on_event(event: dict[str, Any], ssm: Ssm, secrets: Secrets) -> tuple[str, dict[str, str]]:
    """(physical resource id, data) for one CloudFormation event; raises on failure."""
    request = event["RequestType"]
    props = event.get("ResourceProperties", {})
    if request == "Delete":
        physical = str(event.get("PhysicalResourceId", ""))
        if physical.count("-") == 4:  # a real activation ID, not a failed create's placeholder
            revoke(ssm, physical)
        # A reissued activation is unknown to CloudFormation; the secret still names it.
        reissued = current_activation(secrets)
        if reissued and reissued != physical:
            revoke(ssm, reissued)
        return physical, {}
    limit, days = _settings(props)
    if request == "Update":
        physical = str(event["PhysicalResourceId"])
        current = current_activation(secrets) or physical
        old = event.get("OldResourceProperties") or {}
        if all(str(props.get(key)) == str(old.get(key)) for key in SETTINGS):
            return physical, {"ActivationId": current}
        activation_id = issue(ssm, secrets, limit=limit, days=days)
        if current != activation_id and current.count("-") == 4:
            revoke(ssm, current)
        return physical, {"ActivationId": activation_id}
    activation_id = issue(ssm, secrets, limit=limit, days=days)
    return activation_id, {"ActivationId": activation_id}


def reissue(ssm: Ssm, secrets: Secrets) -> dict[str, str]:
    """Operator-invoked: replace the activation with a fresh one of the deployed settings."""
    previous = current_activation(secrets)
    limit, days = _settings(
        {
            "RegistrationLimit": os.environ["REGISTRATION_LIMIT"],
            "ExpiryDays": os.environ["EXPIRY_DAYS"],
        }
    )
    activation_id = issue(ssm, secrets, limit=limit, days=days)
    if previous and previous != activation_id:
        revoke(ssm, previous)
    return {"ActivationId": activation_id}


def _respond(
    event: dict[str, Any], status: str, physical: str, data: dict[str, str], reason: str
) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason[:1000],
            "PhysicalResourceId": physical or event.get("LogicalResourceId", "activation"),
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": data,
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 (CloudFormation's pre-signed S3 URL)
        event["ResponseURL"], data=body, method="PUT", headers={"Content-Type": ""}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        response.read()


def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    """Lambda entry point for CloudFormation (both resource types) and `{"action": "reissue"}`."""
    if event.get("action") == "reissue":
        return reissue(*_clients())
    physical = str(event.get("PhysicalResourceId", ""))
    try:
        if event.get("ResourceType") == TEARDOWN_TYPE:
            physical, data = teardown.on_event(event, *_teardown_clients(), _time_left(context))
        else:
            physical, data = on_event(event, *_clients())
    except Exception as exc:
        # The message may name the role or limits but never holds the activation code.
        _log(
            "custom resource request failed",
            resource_type=event.get("ResourceType"),
            request=event.get("RequestType"),
            error=str(exc),
        )
        _respond(event, "FAILED", physical, {}, f"{type(exc).__name__}: {exc}")
        return {}
    _respond(event, "SUCCESS", physical, data, "")
    return data
