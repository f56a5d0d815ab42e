"""What a Consul-object custom resource asks for: typed, validated once, with stable IDs.

CloudFormation hands a custom resource its properties as strings (numbers and booleans are
stringified), so everything structured arrives as JSON text (`Entry`) or as a list of names,
and is validated here before any network call. Pure functions only: no I/O, no clock.

Object types (property `ObjectType`):
- `AclPolicy`   Name, Rules (HCL or JSON rules), Description
- `AclToken`    Description, Policies (names), ServiceIdentities (service names),
                TokenSecretArn (the Secrets Manager secret that receives the SecretID)
- `ConfigEntry` Entry (the config entry as JSON; Kind and Name required)
Every object also carries the connection: ConsulHttpAddr, TlsServerName (optional),
ManagementTokenSecretArn and CaCertSecretArn (optional only for plain http:// addresses).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

ObjectType = Literal["AclPolicy", "AclToken", "ConfigEntry"]
OBJECT_TYPES: tuple[ObjectType, ...] = ("AclPolicy", "AclToken", "ConfigEntry")

# Namespace of the deterministic AccessorIDs: uuid5(namespace, "<StackId>/<LogicalResourceId>").
# A retried create computes the same AccessorID, finds its token, and never makes a second one.
ACCESSOR_NAMESPACE = uuid.UUID("5b0d3c47-6f43-4c1e-9a55-3d1f3c1f7d2a")

# Consul's own rules (agent/structs/acl.go: validPolicyName, validServiceIdentityName).
_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_SERVICE_IDENTITY = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+$")
# Config entry kinds this provider may manage; mesh-wide kinds use the name "global"/"mesh".
CONFIG_KINDS = frozenset(
    {
        "proxy-defaults",
        "service-defaults",
        "service-intentions",
        "service-router",
        "service-splitter",
        "service-resolver",
        "mesh",
    }
)


class InvalidRequest(ValueError):
    """A property that can never work; the message names the property, the value and the rule."""


@dataclass(frozen=True)
class Connection:
    """Where Consul is and how to trust it. Secrets are referenced by ARN, never carried."""

    address: str
    server_name: str
    management_token_secret_arn: str
    ca_cert_secret_arn: str | None

    @property
    def https(self) -> bool:
        return self.address.startswith("https://")


@dataclass(frozen=True)
class PolicySpec:
    name: str
    rules: str
    description: str


@dataclass(frozen=True)
class TokenSpec:
    description: str
    policies: tuple[str, ...]
    service_identities: tuple[str, ...]
    secret_arn: str


@dataclass(frozen=True)
class ConfigEntrySpec:
    kind: str
    name: str
    entry: Mapping[str, Any] = field(hash=False, compare=False)


Spec = PolicySpec | TokenSpec | ConfigEntrySpec


@dataclass(frozen=True)
class Request:
    """One lifecycle event of one Consul object."""

    request_type: Literal["Create", "Update", "Delete"]
    object_type: ObjectType
    connection: Connection
    spec: Spec
    physical_id: str


def _text(props: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = props.get(key)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"property {key} is required")
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"property {key}={value!r} must be a string")
    return value


def _names(props: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = props.get(key, [])
    if value in ("", None):
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"property {key}={value!r} must be a list of names")
    return tuple(value)


def _secret_arn(props: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    """The ARN under `key`, or "" when it is optional and absent."""
    value = _text(props, key, required=required)
    if value and not _SECRET_ARN.match(value):
        raise InvalidRequest(f"property {key}={value!r} is not a Secrets Manager secret ARN")
    return value


def parse_connection(props: Mapping[str, Any]) -> Connection:
    address = _text(props, "ConsulHttpAddr").rstrip("/")
    parts = urlsplit(address)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path:
        raise InvalidRequest(
            f"property ConsulHttpAddr={address!r} must look like https://<host>:8501"
        )
    ca = _secret_arn(props, "CaCertSecretArn", required=parts.scheme == "https")
    server_name = _text(props, "TlsServerName", required=False) or parts.hostname
    token_arn = _secret_arn(props, "ManagementTokenSecretArn")
    return Connection(address, server_name, token_arn, ca or None)


def parse_policy(props: Mapping[str, Any]) -> PolicySpec:
    name = _text(props, "Name")
    if not _POLICY_NAME.match(name):
        raise InvalidRequest(
            f"property Name={name!r} is not a valid ACL policy name "
            "(letters, digits, '-' and '_', at most 128)"
        )
    return PolicySpec(name, _text(props, "Rules"), _text(props, "Description", required=False))


def parse_token(props: Mapping[str, Any]) -> TokenSpec:
    policies = _names(props, "Policies")
    for name in policies:
        if not _POLICY_NAME.match(name):
            raise InvalidRequest(f"property Policies has {name!r}, not a valid ACL policy name")
    identities = _names(props, "ServiceIdentities")
    for name in identities:
        if len(name) > 256 or not _SERVICE_IDENTITY.match(name):
            raise InvalidRequest(
                f"property ServiceIdentities has {name!r}: service names are lowercase "
                "letters, digits, '-' and '_', starting and ending alphanumeric"
            )
    if not policies and not identities:
        raise InvalidRequest("an AclToken needs at least one of Policies or ServiceIdentities")
    secret_arn = _secret_arn(props, "TokenSecretArn")
    return TokenSpec(_text(props, "Description", required=False), policies, identities, secret_arn)


def parse_config_entry(props: Mapping[str, Any]) -> ConfigEntrySpec:
    raw = _text(props, "Entry")
    try:
        entry = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"property Entry is not JSON ({err.msg} at {err.pos})") from None
    if not isinstance(entry, dict):
        raise InvalidRequest(f"property Entry must be a JSON object, got {type(entry).__name__}")
    kind, name = entry.get("Kind"), entry.get("Name")
    if kind not in CONFIG_KINDS:
        raise InvalidRequest(
            f"config entry Kind={kind!r} is not one of {', '.join(sorted(CONFIG_KINDS))}"
        )
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"config entry Name={name!r} must be a non-empty string")
    return ConfigEntrySpec(kind, name, entry)


def accessor_id(stack_id: str, logical_id: str) -> str:
    """Deterministic AccessorID of the token a custom resource owns."""
    return str(uuid.uuid5(ACCESSOR_NAMESPACE, f"{stack_id}/{logical_id}"))


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def physical_id(spec: Spec, *, stack_id: str, logical_id: str) -> str:
    """The PhysicalResourceId: policy name, token AccessorID, or `<Kind>/<Name>`.

    Changing a policy's Name or an entry's Kind/Name changes it, so CloudFormation replaces
    the object (creates the new one, then deletes the old one in its cleanup phase).
    """
    if isinstance(spec, PolicySpec):
        return spec.name
    if isinstance(spec, TokenSpec):
        return accessor_id(stack_id, logical_id)
    return f"{spec.kind}/{spec.name}"


def parse_request(event: Mapping[str, Any]) -> Request:
    """Validate a CloudFormation custom resource event (as the CDK Provider framework passes it)."""
    request_type = event.get("RequestType")
    if request_type not in ("Create", "Update", "Delete"):
        raise InvalidRequest(f"RequestType={request_type!r} is not Create, Update or Delete")
    props = event.get("ResourceProperties") or {}
    object_type = props.get("ObjectType")
    if object_type not in OBJECT_TYPES:
        raise InvalidRequest(
            f"property ObjectType={object_type!r} is not one of {', '.join(OBJECT_TYPES)}"
        )
    if request_type == "Update":
        old_type = (event.get("OldResourceProperties") or {}).get("ObjectType")
        if old_type is not None and old_type != object_type:
            raise InvalidRequest(
                f"ObjectType cannot change from {old_type} to {object_type}; "
                "declare the new object under a new construct ID"
            )
    connection = parse_connection(props)
    spec: Spec
    if object_type == "AclPolicy":
        spec = parse_policy(props)
    elif object_type == "AclToken":
        spec = parse_token(props)
    else:
        spec = parse_config_entry(props)
    stack_id = str(event.get("StackId", ""))
    logical_id = str(event.get("LogicalResourceId", ""))
    computed = physical_id(spec, stack_id=stack_id, logical_id=logical_id)
    existing = event.get("PhysicalResourceId")
    if isinstance(spec, TokenSpec) and isinstance(existing, str) and is_uuid(existing):
        computed = existing  # an update or delete always targets the token it created
    if request_type == "Delete" and isinstance(existing, str):
        computed = existing
    return Request(request_type, object_type, connection, spec, computed)
