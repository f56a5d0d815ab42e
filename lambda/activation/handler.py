"""Custom resource: the SSM activation ECS Anywhere hosts register with.

CloudFormation has no resource for an SSM activation, and its code is a credential: it must
reach the operator without passing through the template, a stack output, CloudFormation's
response data or a log line. So this function creates the activation and writes
`"<activation-id> <activation-code>"` straight into a Secrets Manager secret; CloudFormation
only ever sees the activation ID.

Events:
- CloudFormation Create: a new activation; its ID becomes the physical ID, for good.
- CloudFormation Update (the limit, expiry or role changed): a new activation replaces the
  previous one in the secret and the previous one is revoked here, like a reissue. The
  physical ID is kept on purpose: a new one would make CloudFormation send Delete for the old
  ID afterwards, and that Delete, seeing the secret name another activation, would revoke the
  new one too (and so would an update rollback).
- CloudFormation Delete: delete the activation (already registered hosts stay registered).
- `{"action": "reissue"}` invoked by an operator: a fresh activation when the old one expired
  or was used up, replacing the secret's value and deleting the previous activation.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import urllib.request
from typing import Any, Protocol

logger = logging.getLogger()
logger.setLevel(logging.INFO)


class Ssm(Protocol):
    def create_activation(self, **kwargs: Any) -> dict[str, Any]: ...
    def delete_activation(self, **kwargs: Any) -> dict[str, Any]: ...


class Secrets(Protocol):
    def put_secret_value(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_secret_value(self, **kwargs: Any) -> dict[str, Any]: ...


def _clients() -> tuple[Ssm, Secrets]:
    import boto3  # noqa: PLC0415 (only the Lambda runtime needs it; tests inject stubs)

    return boto3.client("ssm"), boto3.client("secretsmanager")


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
    response = ssm.create_activation(
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
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code not in ("InvalidActivation", "InvalidActivationId"):
            raise
    _log("activation deleted", activation_id=activation_id)


def current_activation(secrets: Secrets) -> str | None:
    """The activation ID the secret holds, if it holds one (it starts as a random string)."""
    try:
        value = secrets.get_secret_value(SecretId=os.environ["SECRET_ARN"])["SecretString"]
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
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
        if props == event.get("OldResourceProperties"):
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
    """Lambda entry point for CloudFormation and for `{"action": "reissue"}`."""
    ssm, secrets = _clients()
    if event.get("action") == "reissue":
        return reissue(ssm, secrets)
    physical = str(event.get("PhysicalResourceId", ""))
    try:
        physical, data = on_event(event, ssm, secrets)
    except Exception as exc:
        # The message may name the role or limits but never holds the activation code.
        _log("activation request failed", request=event.get("RequestType"), error=str(exc))
        _respond(event, "FAILED", physical, {}, f"{type(exc).__name__}: {exc}")
        return {}
    _respond(event, "SUCCESS", physical, data, "")
    return data
