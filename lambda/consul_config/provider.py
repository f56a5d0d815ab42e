"""Entry points for the CDK custom-resources Provider framework: `on_event` and `is_complete`.

`on_event` only validates the request and names the object (its PhysicalResourceId), without
touching Consul, so a bad declaration fails the deployment at once. `is_complete` does the
work: it waits (a bounded few seconds per call) for the cluster to have a Raft leader, then
applies the object. While Consul is unreachable, leaderless or throttling it answers "not
complete" and the framework calls again after its query interval, up to its total timeout:
a fleet that is still booting is waited for instead of failing the stack. "Not ready" also
covers secrets that still hold their placeholder (the first server publishes the management
token and the CA at boot) and, for TOKEN_REJECTED_GRACE_SECONDS, a management token Consul
does not know yet (the new leader creates it just after the election: `/v1/acl/token/self`
answers 404 until then); after that grace a token Consul still does not know fails the
deployment with a message that names both causes (not created yet, or a wrong secret).

A delete that cannot reach a leader for DELETE_GIVE_UP_SECONDS gives up with a warning: a
stack whose servers never came up (or are already gone) must still roll back or delete. The
window is short on purpose. On stack deletion the catalog drain has already run against these
servers; an object that cannot be deleted a minute later belongs to a Consul that is unreachable
or leaderless, and is about to be deleted with the fleet anyway. Waiting longer only multiplies:
tokens are deleted before the policies they name, one chain after the other.

Logs are one JSON object per line and never contain a token, a SecretID or the CA.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import operations
import secrets_store
from consul_api import ConsulClient, ConsulError, ConsulUnavailable
from objects import ConfigEntrySpec, InvalidRequest, PolicySpec, Request, is_uuid, parse_request

logger = logging.getLogger("consul_config")
logger.setLevel(logging.INFO)

# Keys the provider adds to the event it returns from on_event; the framework passes them to
# every is_complete call (they are not sent to CloudFormation).
STARTED_AT = "ConsulConfigStartedAt"
SKIP = "ConsulConfigNothingToDo"

LEADER_WAIT_PER_CALL = 20.0  # seconds one is_complete call polls for a leader
SAFETY_MARGIN = 10.0  # seconds of the Lambda timeout kept free to answer the framework
DELETE_GIVE_UP_SECONDS = 60.0  # covers a leader election (seconds), not a fleet that is gone
TOKEN_REJECTED_GRACE_SECONDS = 300.0

# Replaced by tests with a fake clock, so no test sleeps on wall time.
_sleep: Callable[[float], None] = time.sleep
_clock: Callable[[], float] = time.monotonic
_now: Callable[[], float] = time.time


class LambdaContext(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


def log(level: int, message: str, request: Request | None = None, **fields: object) -> None:
    """One JSON log line; the request contributes only identifiers, never values."""
    line: dict[str, object] = {"message": message}
    if request is not None:
        line.update(
            request_type=request.request_type,
            object_type=request.object_type,
            physical_id=request.physical_id,
        )
    line.update(fields)
    logger.log(level, json.dumps(line, default=str))


def on_event(event: Mapping[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """Validate and name the object; is_complete does the Consul work."""
    try:
        request = parse_request(event)
    except InvalidRequest as err:
        if event.get("RequestType") == "Delete":
            # The last accepted properties were invalid, so nothing was ever created from them.
            log(logging.WARNING, "delete of an invalid declaration: nothing to do", error=str(err))
            return {"PhysicalResourceId": event.get("PhysicalResourceId"), SKIP: True}
        log(logging.ERROR, "invalid declaration", error=str(err))
        raise
    log(logging.INFO, "accepted", request, logical_id=event.get("LogicalResourceId"))
    return {"PhysicalResourceId": request.physical_id, STARTED_AT: _now()}


def is_complete(event: Mapping[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """Apply the object once Consul has a leader; "not complete" while Consul is not ready."""
    if event.get(SKIP):
        return {"IsComplete": True}
    request = parse_request(event)
    remaining = context.get_remaining_time_in_millis() / 1000 if context else 60.0
    deadline = _clock() + max(1.0, remaining - SAFETY_MARGIN)
    secrets = secrets_store.client()
    try:
        consul = _connect(secrets, request, deadline)
        if not consul.wait_for_leader(min(deadline, _clock() + LEADER_WAIT_PER_CALL)):
            raise NotReady("Consul has no leader yet (or is unreachable)")
        _check_token(consul, event)
        data = _apply(consul, secrets, request)
    except (NotReady, ConsulUnavailable) as err:
        return _not_yet(event, request, str(err))
    log(logging.INFO, "applied", request)
    return {"IsComplete": True, "Data": data} if data else {"IsComplete": True}


class NotReady(Exception):
    """The fleet has not finished bootstrapping (secrets not published, no leader yet)."""


def _connect(
    secrets: secrets_store.SecretsClient, request: Request, deadline: float
) -> ConsulClient:
    """A client with the current management token and CA, read afresh on every call.

    Until the fleet's first boot publishes them, the secrets hold CloudFormation's generated
    placeholder: not a UUID, not a PEM. That means "not ready yet", not a failure.
    """
    conn = request.connection
    token = secrets_store.read_string(
        secrets, conn.management_token_secret_arn, what="management token"
    )
    if not is_uuid(token):
        raise NotReady("the management token secret does not hold a token yet")
    ca_pem = None
    if conn.https and conn.ca_cert_secret_arn:
        ca_pem = secrets_store.read_string(secrets, conn.ca_cert_secret_arn, what="Consul CA")
        if "-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise NotReady("the Consul CA secret does not hold a certificate yet")
    return ConsulClient(
        conn.address,
        token,
        ca_pem=ca_pem,
        server_name=conn.server_name,
        deadline=deadline,
        sleep=_sleep,
        clock=_clock,
    )


# What `GET /v1/acl/token/self` answers while the management token is not usable yet: 404
# "Supplied token does not exist" between the election and initializeACLs (ACLTokenSelf reads
# the secret without resolving it: hashicorp/consul agent/acl_endpoint.go, 7fa1034 lines
# 344-378), 403 "ACL not found" on releases that resolved it, 500 while the agent is still
# finding the leader. A wrong secret answers the same 404, hence the grace and then a failure.
TOKEN_NOT_READY = frozenset({403, 404, 500})


def _check_token(consul: ConsulClient, event: Mapping[str, Any]) -> None:
    """Right after the first election the leader may not have created the initial management
    token yet, so a rejection is waited out for TOKEN_REJECTED_GRACE_SECONDS, then reported."""
    try:
        consul.check_token()
    except ConsulError as err:
        if err.status in TOKEN_NOT_READY and _waited(event) < TOKEN_REJECTED_GRACE_SECONDS:
            raise NotReady(f"{err} (waiting: ACLs may still be bootstrapping)") from None
        raise


def _waited(event: Mapping[str, Any]) -> float:
    started = event.get(STARTED_AT)
    return _now() - float(started) if isinstance(started, int | float) else 0.0


def _apply(
    consul: ConsulClient, secrets: secrets_store.SecretsClient, request: Request
) -> dict[str, str]:
    spec = request.spec
    if request.request_type == "Delete":
        if isinstance(spec, PolicySpec):
            operations.delete_policy(consul, spec)
        elif isinstance(spec, ConfigEntrySpec):
            operations.delete_config_entry(consul, spec)
        else:
            operations.delete_token(consul, request.physical_id)
        return {}
    if isinstance(spec, PolicySpec):
        return operations.apply_policy(consul, spec)
    if isinstance(spec, ConfigEntrySpec):
        return operations.apply_config_entry(consul, spec)
    return operations.apply_token(consul, secrets, spec, request.physical_id)


def _not_yet(event: Mapping[str, Any], request: Request, reason: str) -> dict[str, Any]:
    waited = _waited(event)
    if request.request_type == "Delete" and waited >= DELETE_GIVE_UP_SECONDS:
        log(
            logging.WARNING,
            "gave up deleting: Consul unreachable; the object may remain in Consul",
            request,
            waited_seconds=round(waited),
            reason=reason,
        )
        return {"IsComplete": True}
    log(logging.INFO, "waiting for Consul", request, waited_seconds=round(waited), reason=reason)
    return {"IsComplete": False}
