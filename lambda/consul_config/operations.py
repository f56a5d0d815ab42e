"""Create-or-update and delete of each Consul object, idempotent under retries.

Each function converges Consul to the declared object whatever state an earlier, interrupted
attempt left behind: objects are found by their stable identity (policy name, token
AccessorID, config entry kind and name) rather than remembered, and a delete of something
already gone succeeds. The data returned becomes the custom resource's attributes, so it never
holds a secret.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from consul_api import ConsulError, names
from objects import ConfigEntrySpec, PolicySpec, TokenSpec
from secrets_store import SecretsClient, write_token


class Consul(Protocol):
    """What the operations need from Consul (consul_api.ConsulClient implements it)."""

    def redact(self, *values: str) -> None: ...
    def read_policy_by_name(self, name: str) -> dict[str, Any] | None: ...
    def create_policy(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def update_policy(self, policy_id: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def delete_policy(self, policy_id: str) -> None: ...
    def read_token(self, accessor_id: str) -> dict[str, Any] | None: ...
    def create_token(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def update_token(self, accessor_id: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def delete_token(self, accessor_id: str) -> None: ...
    def write_config(self, entry: dict[str, Any]) -> None: ...
    def delete_config(self, kind: str, name: str) -> None: ...


class ProviderError(RuntimeError):
    """Consul is in a state the provider must not paper over; the message says what to do."""


# ---------------------------------------------------------------------- policies


def apply_policy(consul: Consul, spec: PolicySpec) -> dict[str, str]:
    """Create the policy, or update the one that already has this name (no write if equal)."""
    body = {"Name": spec.name, "Rules": spec.rules, "Description": spec.description}
    existing = consul.read_policy_by_name(spec.name)
    if existing is None:
        try:
            return {"PolicyId": str(consul.create_policy(body)["ID"]), "Name": spec.name}
        except ConsulError:
            # A retried create whose first answer was lost finds "already exists": adopt it.
            existing = consul.read_policy_by_name(spec.name)
            if existing is None:
                raise
    policy_id = str(existing["ID"])
    if (existing.get("Rules"), existing.get("Description", "")) != (spec.rules, spec.description):
        consul.update_policy(policy_id, {"ID": policy_id, **body})
    return {"PolicyId": policy_id, "Name": spec.name}


def delete_policy(consul: Consul, spec: PolicySpec) -> None:
    existing = consul.read_policy_by_name(spec.name)
    if existing is not None:
        consul.delete_policy(str(existing["ID"]))


# ---------------------------------------------------------------------- tokens


def _token_body(spec: TokenSpec, accessor_id: str) -> dict[str, Any]:
    return {
        "AccessorID": accessor_id,
        "Description": spec.description,
        "Policies": [{"Name": name} for name in spec.policies],
        "ServiceIdentities": [{"ServiceName": name} for name in spec.service_identities],
        "Local": False,
    }


def _token_matches(existing: dict[str, Any], spec: TokenSpec) -> bool:
    return (
        existing.get("Description", "") == spec.description
        and names(existing.get("Policies"), "Name") == sorted(spec.policies)
        and names(existing.get("ServiceIdentities"), "ServiceName")
        == sorted(spec.service_identities)
    )


def apply_token(
    consul: Consul, secrets: SecretsClient, spec: TokenSpec, accessor_id: str
) -> dict[str, str]:
    """Create or update the token with this AccessorID, then store its SecretID in the secret.

    A new token gets a fresh random SecretID chosen here (uuid4, from the OS CSPRNG); an
    existing token keeps its SecretID, so running tasks that hold it keep working across
    updates. The token is written before the secret, so the secret never holds a SecretID that
    Consul does not know; a retry after a failed secret write finds the token and writes again.
    """
    existing = consul.read_token(accessor_id)
    if existing is None:
        secret_id = str(uuid.uuid4())
        consul.redact(secret_id)
        try:
            token = consul.create_token({**_token_body(spec, accessor_id), "SecretID": secret_id})
        except ConsulError:
            # A retried create whose first answer was lost finds "AccessorID is already in
            # use": the token exists with the SecretID of that first attempt, so adopt it.
            existing = consul.read_token(accessor_id)
            if existing is None:
                raise
            token, secret_id = _converge(consul, existing, spec, accessor_id)
    else:
        token, secret_id = _converge(consul, existing, spec, accessor_id)
    create_index = token.get("CreateIndex")
    write_token(
        secrets,
        spec.secret_arn,
        accessor_id=accessor_id,
        create_index=create_index if isinstance(create_index, int) else None,
        secret_id=secret_id,
    )
    return {"AccessorID": accessor_id, "TokenSecretArn": spec.secret_arn}


def _converge(
    consul: Consul, existing: dict[str, Any], spec: TokenSpec, accessor_id: str
) -> tuple[dict[str, Any], str]:
    """Bring an existing token to the declaration, keeping its SecretID; returns both."""
    secret_id = str(existing.get("SecretID", ""))
    consul.redact(secret_id)
    if not _is_secret_id(secret_id):
        raise ProviderError(
            f"Consul did not reveal the SecretID of token {accessor_id}: the management "
            "token needs acl:write (Consul redacts SecretIDs for acl:read)"
        )
    if _token_matches(existing, spec):
        return existing, secret_id
    body = {**_token_body(spec, accessor_id), "SecretID": secret_id}  # immutable: kept
    return consul.update_token(accessor_id, body), secret_id


def delete_token(consul: Consul, accessor_id: str) -> None:
    """Delete the token; its secret is deleted by CloudFormation with the secret resource."""
    try:
        uuid.UUID(accessor_id)
    except ValueError:
        return  # never a token of ours: nothing was created under this ID
    consul.delete_token(accessor_id)


def _is_secret_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------- config entries


def apply_config_entry(consul: Consul, spec: ConfigEntrySpec) -> dict[str, str]:
    """Write the entry as declared (PUT /v1/config is an upsert keyed by Kind and Name).

    Always written rather than compared: Consul normalises entries (defaults, precedence), so
    a field-by-field comparison could miss a removed key; CloudFormation only calls this when
    the declaration changed, so the write is not a steady-state cost.
    """
    consul.write_config(dict(spec.entry))
    return {"Kind": spec.kind, "Name": spec.name}


def delete_config_entry(consul: Consul, spec: ConfigEntrySpec) -> None:
    consul.delete_config(spec.kind, spec.name)
