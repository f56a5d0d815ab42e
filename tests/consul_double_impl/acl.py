"""/v1/acl: policies and tokens with caller-chosen IDs (rules stored, never enforced)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import uuid
from typing import Any

from .decode import JSON, UUID_RE, Fields, json_kind
from .errors import DecodeError, HTTPError, denied
from .records import (
    now_rfc3339,
)
from .routing import (
    Backend,
    Reply,
    Request,
    Router,
    decode_body,
    json_reply,
    query_reply,
)
from .store import Store

router = Router()


POLICY_NAME_RE = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")


def _acl_guard(backend: Backend, request: Request, permission: str) -> None:
    if backend.accepted_tokens is None:
        raise HTTPError(401, "ACL support disabled")
    if request.anonymous:
        raise denied(permission, "")


def _hash(payload: JSON) -> str:
    digest = hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=32)
    return base64.b64encode(digest.digest()).decode()


def _policy_stub(policy: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in policy.items() if k != "Rules"}


@router.route(r"/v1/acl/policies", "GET", query=True)
def _acl_policy_list(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    _acl_guard(backend, request, "acl:read")
    store = backend.store
    policies = sorted(store.t.policies.values(), key=lambda p: p["Name"])
    return query_reply([_policy_stub(p) for p in policies], store.table_index("acl-policies"))


@router.route(r"/v1/acl/policy", "PUT")
def _acl_policy_create(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    _acl_guard(backend, request, "acl:write")
    return _acl_policy_write(backend, request, policy_id="")


@router.route(r"/v1/acl/policy/name/(?P<name>.*)", "GET", query=True)
def _acl_policy_by_name(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    _acl_guard(backend, request, "acl:read")
    if not match["name"]:
        raise HTTPError(400, "Missing policy Name")
    store = backend.store
    policy = store.policy_by_name(match["name"])
    if policy is None:
        raise HTTPError(404, "Requested policy does not exist: ACL not found")
    return query_reply(copy.deepcopy(policy), store.table_index("acl-policies"))


@router.route(r"/v1/acl/policy/(?P<id>[^/]*)", "GET PUT DELETE", query=True)
def _acl_policy(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store, policy_id = backend.store, match["id"]
    if request.method == "GET":
        _acl_guard(backend, request, "acl:read")
        if not policy_id:
            raise HTTPError(400, "Missing policy ID")
        policy = store.t.policies.get(policy_id)
        if policy is None:
            raise HTTPError(404, "Requested policy does not exist: ACL not found")
        return query_reply(copy.deepcopy(policy), store.table_index("acl-policies"))
    _acl_guard(backend, request, "acl:write")
    if request.method == "PUT":
        return _acl_policy_write(backend, request, policy_id=policy_id)
    if not policy_id:
        raise HTTPError(400, "Missing policy ID")
    store.apply(lambda idx: _delete_policy(store, idx, policy_id))
    return json_reply(True)


def _delete_policy(store: Store, idx: int, policy_id: str) -> None:
    if store.t.policies.pop(policy_id, None) is not None:
        store._touch(idx, "acl-policies")


def _acl_policy_write(backend: Backend, request: Request, *, policy_id: str) -> Reply:
    store = backend.store
    prefix = "Policy decoding failed: "
    body = decode_body(request, "structs.ACLPolicy", prefix)
    try:
        given_id, name = body.string("ID"), body.string("Name")
        description, rules = body.string("Description"), body.string("Rules")
        datacenters = body.str_list("Datacenters")
    except DecodeError as exc:
        raise HTTPError(400, f"{prefix}{exc}") from None
    if not policy_id and given_id:
        raise HTTPError(400, "Cannot specify the ID when creating a new policy")
    if policy_id and given_id and given_id != policy_id:
        raise HTTPError(400, "Policy ID in URL and payload do not match")
    if not name:
        raise HTTPError(500, "Invalid Policy: no Name is set")
    if not POLICY_NAME_RE.match(name):
        raise HTTPError(
            500,
            "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed",
        )
    existing = store.t.policies.get(policy_id) if policy_id else None
    if policy_id and existing is None:
        raise HTTPError(500, f"cannot find policy {policy_id}")
    same_name = store.policy_by_name(name)
    if same_name is not None and same_name["ID"] != policy_id:
        raise HTTPError(500, f'Invalid Policy: A Policy with Name "{name}" already exists')
    new_id = policy_id or str(uuid.uuid4())

    def write(idx: int) -> dict[str, Any]:
        policy: dict[str, Any] = {
            "ID": new_id,
            "Name": name,
            "Description": description,
            "Rules": rules,
        }
        if datacenters:
            policy["Datacenters"] = datacenters
        policy["Hash"] = _hash(policy)
        policy["CreateIndex"] = existing["CreateIndex"] if existing else idx
        policy["ModifyIndex"] = idx
        store.t.policies[new_id] = policy
        store._touch(idx, "acl-policies")
        return policy

    return json_reply(copy.deepcopy(store.apply(write)))


@router.route(r"/v1/acl/tokens", "GET", query=True)
def _acl_token_list(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    _acl_guard(backend, request, "acl:read")
    store = backend.store
    policy_filter = request.param("policy")
    tokens = [
        backend.store.token_view(t)
        for t in sorted(store.t.tokens.values(), key=lambda t: t["CreateIndex"])
    ]
    if policy_filter:
        tokens = [t for t in tokens if any(p["ID"] == policy_filter for p in t.get("Policies", []))]
    return query_reply(tokens, store.table_index("acl-tokens"))


@router.route(r"/v1/acl/token", "PUT")
def _acl_token_create(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    _acl_guard(backend, request, "acl:write")
    return _acl_token_write(backend, request, accessor="")


@router.route(r"/v1/acl/token/self", "GET", query=True, resolves_token=False)
def _acl_token_self(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    # hashicorp/consul agent/acl_endpoint.go ACLTokenSelf (7fa1034, lines 344-378): RPC
    # ACL.TokenRead by SecretID, which reads the state store without resolving the caller
    # (agent/consul/acl_endpoint.go TokenRead); nothing found -> 404, never 403.
    accepted = backend.accepted_tokens
    if accepted is None:
        raise HTTPError(401, "ACL support disabled")
    store = backend.store
    token = store.token_by_secret(request.token)
    if token is not None:
        return query_reply(store.token_view(token), store.table_index("acl-tokens"))
    if request.token not in accepted:
        raise HTTPError(404, "Supplied token does not exist")
    # An initial token: present it like Consul presents its initial management token.
    view = {
        "AccessorID": "",
        "SecretID": request.token,
        "Description": "initial token",
        "Policies": [_GLOBAL_MANAGEMENT],
        "Local": False,
    }
    return query_reply(view, store.table_index("acl-tokens"))


_GLOBAL_MANAGEMENT = {"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}


@router.route(r"/v1/acl/token/(?P<accessor>[^/]*)", "GET PUT DELETE", query=True)
def _acl_token(backend: Backend, request: Request, match: re.Match[str]) -> Reply:
    store, accessor = backend.store, match["accessor"]
    if request.method == "GET":
        _acl_guard(backend, request, "acl:read")
        if not accessor:
            raise HTTPError(400, "Missing token AccessorID")
        token = store.t.tokens.get(accessor)
        if token is None:
            raise HTTPError(404, "Requested token does not exist: ACL not found")
        return query_reply(backend.store.token_view(token), store.table_index("acl-tokens"))
    _acl_guard(backend, request, "acl:write")
    if request.method == "PUT":
        return _acl_token_write(backend, request, accessor=accessor)
    if not UUID_RE.match(accessor):
        raise HTTPError(500, "Accessor ID is missing or an invalid UUID")
    token = store.t.tokens.get(accessor)
    if token is not None and token["SecretID"] == request.token:
        raise HTTPError(500, "Deletion of the request's authorization token is not permitted")

    def write(idx: int) -> None:
        if store.t.tokens.pop(accessor, None) is not None:
            store._touch(idx, "acl-tokens")

    store.apply(write)
    return json_reply(True)


def _policy_links(store: Store, body: Fields) -> list[dict[str, str]]:
    links: list[dict[str, str]] = []
    raw = body.get("Policies")
    if raw is None:
        return links
    if not isinstance(raw, list):
        raise DecodeError(
            f"json: cannot unmarshal {json_kind(raw)} into Go struct field ACLToken.Policies "
            "of type []structs.ACLTokenPolicyLink"
        )
    for item in raw:
        link = Fields(item, "structs.ACLTokenPolicyLink")
        policy_id, name = link.string("ID"), link.string("Name")
        if policy_id:
            if policy_id not in store.t.policies:
                raise HTTPError(500, f'No such ACL policy with ID "{policy_id}"')
        else:
            policy = store.policy_by_name(name)
            if policy is None:
                raise HTTPError(500, f'No such ACL policy with name "{name}"')
            policy_id = policy["ID"]
        if all(existing["ID"] != policy_id for existing in links):
            links.append({"ID": policy_id})
    return links


def _acl_token_write(backend: Backend, request: Request, *, accessor: str) -> Reply:
    store = backend.store
    prefix = "Token decoding failed: "
    body = decode_body(request, "structs.ACLToken", prefix)
    try:
        given_accessor, secret = body.string("AccessorID"), body.string("SecretID")
        description, local = body.string("Description"), body.boolean("Local")
        links = _policy_links(store, body)
    except DecodeError as exc:
        raise HTTPError(400, f"{prefix}{exc}") from None
    creating = not accessor
    if not creating:
        given_accessor = given_accessor or accessor
        if given_accessor != accessor:
            raise HTTPError(400, "Token Accessor ID in URL and payload do not match")
    initial = backend.accepted_tokens or frozenset()
    in_use = {t["AccessorID"] for t in store.t.tokens.values()}
    in_use |= {t["SecretID"] for t in store.t.tokens.values()} | set(initial)
    existing = None
    if creating:
        for label, value in (("AccessorID", given_accessor), ("SecretID", secret)):
            if value and not UUID_RE.match(value):
                raise HTTPError(500, f"Invalid Token: {label} - not a valid UUID")
            if value and value in in_use:
                raise HTTPError(500, f"Invalid Token: {label} is already in use")
        given_accessor = given_accessor or str(uuid.uuid4())
        secret = secret or str(uuid.uuid4())
    else:
        if not UUID_RE.match(accessor):
            raise HTTPError(500, "AccessorID is not a valid UUID")
        existing = store.t.tokens.get(accessor)
        if existing is None:
            raise HTTPError(500, f'Cannot find token "{accessor}"')
        if secret and secret != existing["SecretID"]:
            raise HTTPError(500, "Changing a token's SecretID is not permitted")
        if local != existing["Local"]:
            raise HTTPError(500, f"Cannot toggle local mode of {accessor}")
        secret = existing["SecretID"]

    def write(idx: int) -> dict[str, Any]:
        token: dict[str, Any] = {
            "AccessorID": given_accessor,
            "SecretID": secret,
            "Description": description,
        }
        if links:
            token["Policies"] = links
        token["Local"] = local
        token["CreateTime"] = existing["CreateTime"] if existing else now_rfc3339()
        token["Hash"] = _hash({k: token[k] for k in ("Description", "Local")} | {"P": links})
        token["CreateIndex"] = existing["CreateIndex"] if existing else idx
        token["ModifyIndex"] = idx
        store.t.tokens[given_accessor] = token
        store._touch(idx, "acl-tokens")
        return token

    token = store.apply(write)
    return json_reply(backend.store.token_view(token))
