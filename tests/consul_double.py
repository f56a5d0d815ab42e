"""An in-process HTTP double of the Consul HTTP API, faithful where our code depends on Consul.

No Consul binary can run on the build machines, so the registrar Lambda and the ACL/config-entry
custom resource are tested against this double instead. It answers over real HTTP on 127.0.0.1 so
clients exercise their real transport, retries and timeouts, and it lets a test inject the
failures a real cluster produces (5xx, 429, dropped connections, slow answers, no leader).

Usage::

    with ConsulDouble(acl_tokens={"root-token"}) as consul:
        os.environ["CONSUL_HTTP_ADDR"] = consul.url
        consul.inject(kind="status", path_prefix="/v1/txn", status=500, times=1)
        ...
        assert consul.services(node="ecs-task-abc")[0]["ServiceMeta"]["task-id"] == "abc"

Standard library only. One lock (a Condition) guards all state; blocking queries wait on it.

What was checked against hashicorp/consul sources (read through the code search index; the newest
stored versions unless noted), and where:

- agent/txn_endpoint.go (``convertOps``): at most 128 ops (``maxTxnOps = 128``), else 413
  "Transaction contains too many operations (N > 128)"; body over 512 KiB -> 413; undecodable body
  -> 400 "Failed to parse body: ..."; ops with no KV/Node/Service/Check member are silently dropped
  (so OpIndex counts only the kept ops); a read-only txn goes to ``Txn.Read`` (no raft index used);
  409 carries the whole ``{"Results": null, "Errors": [...]}`` body. The Service op mapping keeps
  only ID, Service, Kind, Tags, Address, Meta, Port, Weights (always set: absent Weights become
  {0,0}, which the state store then replaces by {1,1}), EnableTagOverride and, from Proxy, only
  DestinationServiceName, DestinationServiceID, LocalServiceAddress, LocalServicePort,
  LocalServiceSocketPath, MeshGateway.Mode and TransparentProxy{DialedDirectly,
  OutboundListenerPort}. Everything else (Proxy.Upstreams, Proxy.Config, Proxy.Expose, Proxy.Mode,
  TaggedAddresses, SocketPath, Connect) is dropped, and a txn ``set`` replaces the whole service.
- agent/consul/txn_endpoint.go (``preCheck``): per-op validation before raft; a failure here is a
  409 without using a raft index. Service set/cas/delete/delete-cas all run ``servicePreApply``
  (so a Service *delete* needs ``Service.Service`` when it has an ID: "Must provide service name
  (Service.Service) when service ID is provided"), and an existing service ID may not be written
  under another name ("service name does not match existing service name ..."). Node ops need a
  node name ("Must provide node"); unknown verbs fail with "unknown node operation: X" etc.
- agent/consul/state/txn.go: verbs and error texts; dispatch runs EVERY op (ops see the effects
  of earlier ops) and reports every failing OpIndex; any error rolls the whole txn back. ``get``
  of a missing KV/node/service/check fails the txn ("key \\"k\\" doesn't exist"); ``check-index``,
  ``check-not-exists``, ``check-session``, ``get-or-empty``, ``lock``/``unlock`` (no sessions
  exist here, so they fail like Consul does with an unknown session). Set/cas results carry the
  entry without its value; delete verbs return no result.
- agent/consul/state/kvs.go: cas index 0 = "only if absent"; KV delete-cas of a missing key
  returns true; a set that changes nothing keeps the old ModifyIndex. Single-key reads report the
  key's ModifyIndex (the KV table index when absent).
- agent/consul/state/catalog.go: register skips unchanged node/service/check writes (indexes keep
  their value); node delete removes its services and checks; service delete removes its checks;
  services and checks need their node ("Missing node registration") and checks their service
  ("Missing service registration"); node/service/check cas semantics (0 = must not exist).
- agent/consul/catalog_endpoint.go + agent/http.go: validation errors of catalog register are
  plain RPC errors, which the HTTP layer answers with **500**, not 400 ("Must provide node",
  "Must provide address if SkipNodeUpdate is not set", the multierror text of
  ``NodeService.Validate`` such as "Proxy.DestinationServiceName must be non-empty for Connect
  proxy services"). hashicorp/consul-esm#9 shows the same 500. Deregister precedence: ServiceID,
  then CheckID, then the whole node; deregistering something absent still answers ``true``.
- agent/catalog_endpoint.go: ``/v1/catalog/node/:n`` answers 200 ``null`` for an unknown node;
  ``/v1/catalog/node-services/:n`` answers ``{"Node": null, "Services": null}``; nil tags become [].
- agent/http.go: ``X-Consul-Index`` is never 0 (0 is sent as 1); ``X-Consul-KnownLeader`` and
  ``X-Consul-LastContact`` on reads; a wrong method is 405 with an Allow header; ACL "not found"
  and "permission denied" errors are 403 with the error text; any other RPC error is **500**,
  including a bad ``?filter=`` ("Failed to create boolean expression evaluator: ...": the filter
  is compiled in the RPC, so it is not a 400 as one might expect).
- agent/kvs_endpoint.go: 404 with headers for a missing key, ``?raw``, ``?keys`` (+separator),
  ``?recurse``, ``?cas``, ``?flags``, "Conflicting flags" 400, PUT answers true (or the cas
  result), DELETE answers true (or the delete-cas result).
- agent/acl_endpoint.go, agent/consul/auth/token_writer.go, agent/consul/acl_endpoint.go: ACLs off
  -> 401 "ACL support disabled"; caller-chosen AccessorID/SecretID must be UUIDs and unused
  ("Invalid Token: AccessorID is already in use" -- a plain error, so **500**, not 400); policy
  links by ID or Name ("No such ACL policy with name ..."); missing policy/token on GET -> 404;
  DELETE of a missing policy/token -> true; a token cannot delete itself.
- agent/config_endpoint.go, state/config_entry.go: PUT answers the bool, ``?cas`` (0 = create
  only), GET missing -> 404 "Config entry not found for \\"kind\\" / \\"name\\"", DELETE answers
  ``{}`` (or the bool with ``?cas``; delete-cas of a missing entry is false), unknown kind -> 400.

Deliberate simplifications (documented so nobody mistakes them for Consul behaviour):

- ACL: "default deny". A request with an accepted token may do anything (policy Rules are stored
  verbatim, never parsed nor enforced). An unknown token gets 403 "ACL not found" on every
  endpoint but /v1/status/*. A request without a token is the anonymous token: writes get 403
  "Permission denied: ...", txn write ops get a "Permission denied" error each (409), catalog and
  health reads are filtered to empty (with ``X-Consul-Results-Filtered-By-ACLs: true``), KV and
  config single reads get 403. Accepted tokens: the constructor's (or ``set_tokens``) plus the
  SecretIDs of tokens created through the API. The initial tokens are not listed by /v1/acl/tokens.
- Raft: one simulated log index, ``index``. Every accepted write (including one that changes
  nothing, or a cas/txn that fails inside the state store) consumes an index, as in Consul;
  rejections before raft (validation, ACL, preCheck) do not. Never assume indexes are contiguous.
- Blocking: ``?index=N&wait=D`` waits until the endpoint's index > N or D elapses (no jitter; D
  defaults to 5m and is capped at 10m like Consul). Per-endpoint indexes follow Consul's tables
  (nodes, services, per-service-name, checks, kvs+tombstones, config, acl).
- Filters: a subset of go-bexpr, see ``_compile_filter``. Selectors are checked against the
  documented field set of each endpoint; unknown selectors and bad syntax are 500 like Consul.
- No leader (``has_leader = False``): /v1/status/leader answers ``""`` and every other endpoint
  500 "No cluster leader", except GETs with ``?stale``.
- Not modelled: sessions, namespaces/partitions, peering, virtual IPs, node IDs as identity
  (renames), prepared queries, agent endpoints, ``?near``, consistency modes beyond ``?stale``,
  HCL parsing of policy Rules, normalisation of config entries (stored as sent, Kind/Name set).
  Catalog node names are matched case-insensitively, as Consul's lowercase index does.

Not confirmed (wording or behaviour taken from memory or inference, not read in source): the exact
404 text of a missing ACL policy/token, the check-node-mismatch text, the Upstream validation
texts, the meta validation texts, the anonymous "Permission denied" detail, and whether Consul
answers a catalog read filtered by ACLs for an unknown *node* with null.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["ConsulDouble", "RecordedRequest"]

JSON = Any

MAX_TXN_OPS = 128  # agent/txn_endpoint.go, Consul >= 1.14
MAX_TXN_BYTES = 512 * 1024  # txn_max_req_len default
MAX_KV_VALUE = 512 * 1024  # kv_max_value_size default
DEFAULT_WAIT = 300.0  # blocking query default wait, seconds
MAX_WAIT = 600.0  # blocking query maximum wait, seconds
LEADER_ADDRESS = "127.0.0.1:8300"
ANONYMOUS_HINT = "The anonymous token is used implicitly when a request does not specify a token."
UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
POLICY_NAME_RE = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
META_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
CONFIG_KINDS = frozenset(
    {
        "service-defaults",
        "proxy-defaults",
        "service-router",
        "service-splitter",
        "service-resolver",
        "ingress-gateway",
        "terminating-gateway",
        "service-intentions",
        "mesh",
        "exported-services",
        "sameness-group",
        "api-gateway",
        "bound-api-gateway",
        "inline-certificate",
        "file-system-certificate",
        "http-route",
        "tcp-route",
        "jwt-provider",
        "control-plane-request-limit",
    }
)
GATEWAY_KINDS = frozenset({"mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway"})
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})


# --------------------------------------------------------------------------------------------
# Errors


class _HTTPError(Exception):
    """A non-200 answer decided before or instead of a state change (no raft index used)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _RaftError(Exception):
    """A write failed while being applied: rolled back, but its raft index is consumed (500)."""


class _DecodeError(Exception):
    """A JSON body does not fit the Go struct Consul decodes it into."""


def _denied(permission: str, resource: str) -> _HTTPError:
    return _HTTPError(403, _denied_text(permission, resource))


def _denied_text(permission: str, resource: str) -> str:
    target = f' on "{resource}"' if resource else ""
    return (
        f"Permission denied: anonymous token lacks permission '{permission}'{target}. "
        f"{ANONYMOUS_HINT}"
    )


def _multierror(errors: list[str]) -> str:
    """hashicorp/go-multierror's default text, which Consul returns verbatim."""
    noun = "error" if len(errors) == 1 else "errors"
    points = "".join(f"\t* {e}\n" for e in errors)
    return f"{len(errors)} {noun} occurred:\n{points}\n"


# --------------------------------------------------------------------------------------------
# Decoding request bodies the way Go's encoding/json fills a struct


_GO_TYPES = {str: "string", int: "int", bool: "bool", list: "[]string", dict: "map[string]string"}


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Fields:
    """Case-insensitive view of a JSON object (Go matches struct fields with EqualFold)."""

    def __init__(self, obj: object, struct: str) -> None:
        if obj is None:
            obj = {}
        if not isinstance(obj, dict):
            raise _DecodeError(
                f"json: cannot unmarshal {_json_kind(obj)} into Go value of type {struct}"
            )
        self.obj: dict[str, Any] = obj
        self.struct = struct

    def get(self, name: str) -> Any:
        if name in self.obj:
            return self.obj[name]
        lowered = name.lower()
        for key, value in self.obj.items():
            if key.lower() == lowered:
                return value
        return None

    def _typed(self, name: str, kind: type, go_type: str) -> Any:
        value = self.get(name)
        if value is None:
            return None
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise _DecodeError(
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                f"{self.struct}.{name} of type {go_type}"
            )
        return value

    def string(self, name: str) -> str:
        value: str | None = self._typed(name, str, "string")
        return value or ""

    def integer(self, name: str) -> int:
        value: int | None = self._typed(name, int, "int")
        return value or 0

    def boolean(self, name: str) -> bool:
        value: bool | None = self._typed(name, bool, "bool")
        return bool(value)

    def str_list(self, name: str) -> list[str] | None:
        value: list[Any] | None = self._typed(name, list, "[]string")
        if value is not None and not all(isinstance(v, str) for v in value):
            raise _DecodeError(
                f"json: cannot unmarshal array into Go struct field {self.struct}.{name} "
                "of type []string"
            )
        return None if value is None else list(value)

    def str_map(self, name: str) -> dict[str, str] | None:
        value: dict[str, Any] | None = self._typed(name, dict, "map[string]string")
        if value is not None and not all(isinstance(v, str) for v in value.values()):
            raise _DecodeError(
                f"json: cannot unmarshal object into Go struct field {self.struct}.{name} "
                "of type map[string]string"
            )
        return None if value is None else dict(value)

    def sub(self, name: str, struct: str) -> _Fields | None:
        value = self.get(name)
        return None if value is None else _Fields(value, struct)

    def raw(self, name: str, kind: type, go_type: str) -> Any:
        return copy.deepcopy(self._typed(name, kind, go_type))


# --------------------------------------------------------------------------------------------
# Filtering: a subset of hashicorp/go-bexpr, compiled by a small recursive-descent parser


_STR, _INT, _BOOL, _MAP, _STRS = "string", "int", "bool", "map", "strings"
_Schema = dict[str, Any]

_MESH_GATEWAY: _Schema = {"Mode": _STR}
_UPSTREAM: _Schema = {
    "DestinationType": _STR,
    "DestinationNamespace": _STR,
    "DestinationPartition": _STR,
    "DestinationPeer": _STR,
    "DestinationName": _STR,
    "Datacenter": _STR,
    "LocalBindAddress": _STR,
    "LocalBindPort": _INT,
    "LocalBindSocketPath": _STR,
    "MeshGateway": _MESH_GATEWAY,
    "CentrallyConfigured": _BOOL,
}
_PROXY: _Schema = {
    "DestinationServiceName": _STR,
    "DestinationServiceID": _STR,
    "LocalServiceAddress": _STR,
    "LocalServicePort": _INT,
    "LocalServiceSocketPath": _STR,
    "Mode": _STR,
    "Upstreams": [_UPSTREAM],
    "MeshGateway": _MESH_GATEWAY,
    "Expose": {"Checks": _BOOL, "Paths": [{"ListenerPort": _INT, "Path": _STR}]},
    "TransparentProxy": {"OutboundListenerPort": _INT, "DialedDirectly": _BOOL},
}
_WEIGHTS: _Schema = {"Passing": _INT, "Warning": _INT}
# RaftIndex fields are `bexpr:"-"` in agent/structs: CreateIndex/ModifyIndex are not selectable.
NODE_SCHEMA: _Schema = {
    "ID": _STR,
    "Node": _STR,
    "Address": _STR,
    "Datacenter": _STR,
    "TaggedAddresses": _MAP,
    "Meta": _MAP,
}
SERVICE_NODE_SCHEMA: _Schema = {
    "ID": _STR,
    "Node": _STR,
    "Address": _STR,
    "Datacenter": _STR,
    "TaggedAddresses": _MAP,
    "NodeMeta": _MAP,
    "ServiceKind": _STR,
    "ServiceID": _STR,
    "ServiceName": _STR,
    "ServiceTags": _STRS,
    "ServiceAddress": _STR,
    "ServiceTaggedAddresses": _MAP,
    "ServiceWeights": _WEIGHTS,
    "ServiceMeta": _MAP,
    "ServicePort": _INT,
    "ServiceSocketPath": _STR,
    "ServiceEnableTagOverride": _BOOL,
    "ServiceProxy": _PROXY,
    "ServiceConnect": {"Native": _BOOL},
}
NODE_SERVICE_SCHEMA: _Schema = {
    "Kind": _STR,
    "ID": _STR,
    "Service": _STR,
    "Tags": _STRS,
    "Address": _STR,
    "TaggedAddresses": _MAP,
    "Meta": _MAP,
    "Port": _INT,
    "SocketPath": _STR,
    "Weights": _WEIGHTS,
    "EnableTagOverride": _BOOL,
    "Proxy": _PROXY,
    "Connect": {"Native": _BOOL},
}
HEALTH_CHECK_SCHEMA: _Schema = {
    "Node": _STR,
    "CheckID": _STR,
    "Name": _STR,
    "Status": _STR,
    "Notes": _STR,
    "Output": _STR,
    "ServiceID": _STR,
    "ServiceName": _STR,
    "ServiceTags": _STRS,
    "Type": _STR,
    "Interval": _STR,
    "Timeout": _STR,
    "ExposedPort": _INT,
}
CHECK_SERVICE_NODE_SCHEMA: _Schema = {
    "Node": NODE_SCHEMA,
    "Service": NODE_SERVICE_SCHEMA,
    "Checks": [HEALTH_CHECK_SCHEMA],
}

_Predicate = Callable[[dict[str, Any]], bool]
_MISSING = object()
_WORD_CHARS = re.compile(r"[A-Za-z0-9_\-./:]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+")


class _FilterError(Exception):
    pass


@dataclass(frozen=True)
class _Selector:
    text: str
    path: tuple[str, ...]
    leaf: Any  # a scalar type name, _MAP, _STRS or a nested schema
    many: bool  # crossed a list of structs: the selector yields a list of values


def _compile_filter(expression: str, schema: _Schema) -> _Predicate:
    """Compile a filter expression into a predicate over one result element.

    Supported (a subset of go-bexpr, the library Consul uses):
      - selectors: ``Field``, ``Field.Sub``, ``Map.key``, ``Map["any key"]``, through lists of
        structs (``Checks.Status``, ``ServiceProxy.Upstreams.DestinationName``), checked against
        the endpoint's documented fields;
      - ``S == V``, ``S != V``, ``S is empty``, ``S is not empty``, ``V in S``, ``V not in S``,
        ``S contains V``, ``S not contains V``, ``S matches "re"``, ``S not matches "re"``;
        ``in``/``contains`` test list membership, map keys, or substrings;
      - ``and``, ``or``, ``not``, parentheses; values as "double quoted", `raw`, or bare words
        (numbers, true/false, identifiers); numbers and booleans coerced to the field's type.
    A missing map key is an empty string. Anything else raises ``_FilterError``.
    """
    parser = _FilterParser(expression, schema)
    return parser.parse()


class _FilterParser:
    def __init__(self, text: str, schema: _Schema) -> None:
        self.text = text
        self.pos = 0
        self.schema = schema

    # -- lexical helpers
    def _fail(self, detail: str) -> _FilterError:
        return _FilterError(f"1:{self.pos + 1} ({self.pos}): {detail}")

    def _skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _keyword(self, word: str) -> bool:
        self._skip_ws()
        end = self.pos + len(word)
        if self.text[self.pos : end] != word:
            return False
        if end < len(self.text) and (self.text[end].isalnum() or self.text[end] == "_"):
            return False
        self.pos = end
        return True

    def _literal(self, token: str) -> bool:
        self._skip_ws()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    # -- grammar
    def parse(self) -> _Predicate:
        if not self.text.strip():
            raise self._fail("no match found, expected: an expression")
        predicate = self._or()
        self._skip_ws()
        if self.pos != len(self.text):
            raise self._fail('no match found, expected: "and", "or" or end of input')
        return predicate

    def _or(self) -> _Predicate:
        left = self._and()
        while self._keyword("or"):
            right = self._and()
            left = _either(left, right)
        return left

    def _and(self) -> _Predicate:
        left = self._not()
        while self._keyword("and"):
            right = self._not()
            left = _both(left, right)
        return left

    def _not(self) -> _Predicate:
        if self._keyword("not"):
            inner = self._not()
            return lambda item: not inner(item)
        return self._primary()

    def _primary(self) -> _Predicate:
        if self._literal("("):
            inner = self._or()
            if not self._literal(")"):
                raise self._fail('no match found, expected: ")"')
            return inner
        return self._match()

    def _match(self) -> _Predicate:
        self._skip_ws()
        start = self.pos
        value = self._quoted()
        if value is None:
            word = _WORD_CHARS.match(self.text, self.pos)
            if word:
                self.pos = word.end()
                if self._membership_follows():
                    value = word.group()
                else:
                    self.pos = start
        if value is not None:
            negate = self._keyword("not")
            if not self._keyword("in"):
                raise self._fail('no match found, expected: "in" or "not in"')
            return _member_test(self._selector(), value, negate=negate)
        selector = self._selector()
        return self._operator(selector)

    def _membership_follows(self) -> bool:
        save = self.pos
        found = self._keyword("in") or (self._keyword("not") and self._keyword("in"))
        self.pos = save
        return found

    def _operator(self, selector: _Selector) -> _Predicate:
        if self._literal("=="):
            return _equality(selector, self._value(), negate=False)
        if self._literal("!="):
            return _equality(selector, self._value(), negate=True)
        if self._keyword("is"):
            negate = self._keyword("not")
            if not self._keyword("empty"):
                raise self._fail('no match found, expected: "empty" or "not empty"')
            return _emptiness(selector, negate=negate)
        negate = self._keyword("not")
        if self._keyword("contains"):
            return _member_test(selector, self._value(), negate=negate)
        if self._keyword("matches"):
            return _regex_test(selector, self._value(), negate=negate)
        raise self._fail(
            'no match found, expected: "!=", "==", "contains", "is", "matches" or "not"'
        )

    def _quoted(self) -> str | None:
        self._skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] not in '"`':
            return None
        quote = self.text[self.pos]
        out: list[str] = []
        index = self.pos + 1
        while index < len(self.text):
            char = self.text[index]
            if char == quote:
                self.pos = index + 1
                return "".join(out)
            if char == "\\" and quote == '"' and index + 1 < len(self.text):
                index += 1
                char = {"n": "\n", "t": "\t"}.get(self.text[index], self.text[index])
            out.append(char)
            index += 1
        raise self._fail("no match found, expected: closing quote")

    def _value(self) -> str:
        quoted = self._quoted()
        if quoted is not None:
            return quoted
        word = _WORD_CHARS.match(self.text, self.pos)
        if not word:
            raise self._fail("no match found, expected: a value")
        self.pos = word.end()
        return word.group()

    def _selector(self) -> _Selector:
        self._skip_ws()
        start = self.pos
        ident = _IDENT.match(self.text, self.pos)
        if not ident:
            raise self._fail("no match found, expected: a selector")
        path = [ident.group()]
        self.pos = ident.end()
        while self.pos < len(self.text) and self.text[self.pos] in ".[":
            if self.text[self.pos] == ".":
                segment = _SEGMENT.match(self.text, self.pos + 1)
                if not segment:
                    raise self._fail("no match found, expected: a selector field")
                path.append(segment.group())
                self.pos = segment.end()
            else:
                self.pos += 1
                key = self._quoted()
                if key is None or not self._literal("]"):
                    raise self._fail('no match found, expected: a quoted key and "]"')
                path.append(key)
        text = self.text[start : self.pos]
        leaf, many = _resolve_schema(self.schema, path, text)
        return _Selector(text=text, path=tuple(path), leaf=leaf, many=many)


def _resolve_schema(schema: _Schema, path: list[str], text: str) -> tuple[Any, bool]:
    current: Any = schema
    many = False
    for position, segment in enumerate(path):
        if isinstance(current, list):
            current, many = current[0], True
        if isinstance(current, dict) and segment in current:
            current = current[segment]
        elif current == _MAP and position == len(path) - 1:
            current = _STR
        else:
            raise _FilterError(f'Selector "{text}" is not valid')
    return current, many


def _select(item: dict[str, Any], selector: _Selector) -> Any:
    values: list[Any] = [item]
    for segment in selector.path:
        found: list[Any] = []
        for value in values:
            for candidate in value if isinstance(value, list) else [value]:
                if isinstance(candidate, dict) and segment in candidate:
                    found.append(candidate[segment])
        values = found
    if selector.many:
        flat: list[Any] = []
        for value in values:
            flat.extend(value if isinstance(value, list) else [value])
        return flat
    if not values:
        return "" if selector.leaf == _STR else _MISSING
    return values[0]


def _coerce(selector: _Selector, raw: str) -> object:
    if selector.leaf == _INT:
        try:
            return int(raw)
        except ValueError:
            raise _FilterError(
                f'Failed to coerce value "{raw}" to the type of selector "{selector.text}": '
                "not an integer"
            ) from None
    if selector.leaf == _BOOL:
        truth = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}
        if raw.lower() not in truth:
            raise _FilterError(
                f'Failed to coerce value "{raw}" to the type of selector "{selector.text}": '
                "not a boolean"
            )
        return truth[raw.lower()]
    return raw


def _either(left: _Predicate, right: _Predicate) -> _Predicate:
    return lambda item: left(item) or right(item)


def _both(left: _Predicate, right: _Predicate) -> _Predicate:
    return lambda item: left(item) and right(item)


def _equality(selector: _Selector, raw: str, *, negate: bool) -> _Predicate:
    if selector.many or selector.leaf not in (_STR, _INT, _BOOL):
        raise _FilterError(f'Selector "{selector.text}" does not support the == / != operators')
    expected = _coerce(selector, raw)

    def test(item: dict[str, Any]) -> bool:
        value = _select(item, selector)
        return bool(value == expected) != negate

    return test


def _emptiness(selector: _Selector, *, negate: bool) -> _Predicate:
    def test(item: dict[str, Any]) -> bool:
        value = _select(item, selector)
        empty = value is _MISSING or value is None or value in ("", 0, False) or value == []
        empty = empty or value == {}
        return empty != negate

    return test


def _member_test(selector: _Selector, raw: str, *, negate: bool) -> _Predicate:
    if not selector.many and selector.leaf not in (_STR, _MAP, _STRS):
        raise _FilterError(f'Selector "{selector.text}" does not support in / contains')
    expected = _coerce(selector, raw) if selector.many else raw

    def test(item: dict[str, Any]) -> bool:
        value = _select(item, selector)
        if isinstance(value, dict | list):
            found = expected in value
        elif isinstance(value, str):
            found = str(expected) in value
        else:
            found = False
        return found != negate

    return test


def _regex_test(selector: _Selector, raw: str, *, negate: bool) -> _Predicate:
    if selector.many or selector.leaf != _STR:
        raise _FilterError(f'Selector "{selector.text}" does not support matches')
    try:
        pattern = re.compile(raw)
    except re.error as exc:
        raise _FilterError(f"Invalid regular expression {raw!r}: {exc}") from None

    def test(item: dict[str, Any]) -> bool:
        value = _select(item, selector)
        found = isinstance(value, str) and pattern.search(value) is not None
        return found != negate

    return test


# --------------------------------------------------------------------------------------------
# Catalog records: what a registration turns into, in Consul's JSON shapes


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _node_record(fields: _Fields, datacenter: str) -> dict[str, Any]:
    return {
        "ID": fields.string("ID"),
        "Node": fields.string("Node"),
        "Address": fields.string("Address"),
        "Datacenter": fields.string("Datacenter") or datacenter,
        "TaggedAddresses": fields.str_map("TaggedAddresses"),
        "Meta": fields.str_map("Meta"),
    }


def _weights(fields: _Fields | None) -> dict[str, int]:
    """ToServiceNode: invalid or absent weights become {1, 1}."""
    if fields is None:
        return {"Passing": 1, "Warning": 1}
    passing, warning = fields.integer("Passing"), fields.integer("Warning")
    if passing < 1 or warning < 0 or passing > 65535 or warning > 65535:
        return {"Passing": 1, "Warning": 1}
    return {"Passing": passing, "Warning": warning}


def _tagged_service_addresses(fields: _Fields) -> dict[str, Any] | None:
    raw = fields.get("TaggedAddresses")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _DecodeError(
            f"json: cannot unmarshal {_json_kind(raw)} into Go struct field "
            f"{fields.struct}.TaggedAddresses of type map[string]structs.ServiceAddress"
        )
    out: dict[str, Any] = {}
    for name, value in raw.items():
        entry = _Fields(value, "structs.ServiceAddress")
        out[name] = {"Address": entry.string("Address"), "Port": entry.integer("Port")}
    return out


def _proxy_record(fields: _Fields | None, *, txn_subset: bool) -> dict[str, Any]:
    """The ConnectProxyConfig as Consul stores it. ``txn_subset`` applies convertOps' mapping."""
    if fields is None:
        return {"Mode": "", "MeshGateway": {}, "Expose": {}}
    out: dict[str, Any] = {}
    for name in ("DestinationServiceName", "DestinationServiceID", "LocalServiceAddress"):
        if fields.string(name):
            out[name] = fields.string(name)
    if fields.integer("LocalServicePort"):
        out["LocalServicePort"] = fields.integer("LocalServicePort")
    if fields.string("LocalServiceSocketPath"):
        out["LocalServiceSocketPath"] = fields.string("LocalServiceSocketPath")
    out["Mode"] = "" if txn_subset else fields.string("Mode")
    if not txn_subset:
        out.update(_proxy_opaque_parts(fields, "Config", "Upstreams"))
    gateway = fields.sub("MeshGateway", "structs.MeshGatewayConfig")
    out["MeshGateway"] = (
        {"Mode": gateway.string("Mode")} if gateway and gateway.string("Mode") else {}
    )
    expose = None if txn_subset else fields.raw("Expose", dict, "structs.ExposeConfig")
    out["Expose"] = expose or {}
    transparent = _transparent_proxy(fields.sub("TransparentProxy", "TransparentProxyConfig"))
    if transparent:
        out["TransparentProxy"] = transparent
    if not txn_subset:
        out.update(_proxy_opaque_parts(fields, "AccessLogs"))
    return out


_OPAQUE_TYPES: dict[str, tuple[type, str]] = {
    "Config": (dict, "map[string]interface {}"),
    "Upstreams": (list, "structs.Upstreams"),
    "AccessLogs": (dict, "structs.AccessLogsConfig"),
}


def _proxy_opaque_parts(fields: _Fields, *names: str) -> dict[str, Any]:
    """Proxy parts kept as sent (only on a catalog register; a txn drops them)."""
    parts: dict[str, Any] = {}
    for name in names:
        kind, go_type = _OPAQUE_TYPES[name]
        value = fields.raw(name, kind, go_type)
        if value:
            parts[name] = value
    return parts


def _transparent_proxy(fields: _Fields | None) -> dict[str, Any]:
    if fields is None:
        return {}
    out: dict[str, Any] = {}
    if fields.integer("OutboundListenerPort"):
        out["OutboundListenerPort"] = fields.integer("OutboundListenerPort")
    if fields.boolean("DialedDirectly"):
        out["DialedDirectly"] = True
    return out


def _service_record(fields: _Fields, *, txn_subset: bool) -> dict[str, Any]:
    """A NodeService from a catalog registration (full) or a txn Service op (convertOps subset)."""
    record: dict[str, Any] = {}
    if fields.string("Kind"):
        record["Kind"] = fields.string("Kind")
    record["ID"] = fields.string("ID")
    record["Service"] = fields.string("Service")
    record["Tags"] = fields.str_list("Tags") or []
    record["Address"] = fields.string("Address")
    if not txn_subset:
        tagged = _tagged_service_addresses(fields)
        if tagged:
            record["TaggedAddresses"] = tagged
    record["Meta"] = fields.str_map("Meta")
    if fields.integer("Port"):
        record["Port"] = fields.integer("Port")
    if not txn_subset and fields.string("SocketPath"):
        record["SocketPath"] = fields.string("SocketPath")
    record["Weights"] = _weights(fields.sub("Weights", "structs.Weights"))
    record["EnableTagOverride"] = fields.boolean("EnableTagOverride")
    record["Proxy"] = _proxy_record(
        fields.sub("Proxy", "structs.ConnectProxyConfig"), txn_subset=txn_subset
    )
    connect = None if txn_subset else fields.sub("Connect", "structs.ServiceConnect")
    record["Connect"] = (
        {"Native": True} if connect is not None and connect.boolean("Native") else {}
    )
    if not txn_subset and fields.get("Locality") is not None:
        record["Locality"] = fields.raw("Locality", dict, "structs.Locality")
    return record


_CHECK_DEFINITION_FIELDS: tuple[tuple[str, type], ...] = (
    ("HTTP", str),
    ("TLSServerName", str),
    ("TLSSkipVerify", bool),
    ("Header", dict),
    ("Method", str),
    ("Body", str),
    ("DisableRedirects", bool),
    ("TCP", str),
    ("UDP", str),
    ("GRPC", str),
    ("GRPCUseTLS", bool),
    ("OSService", str),
    ("H2PING", str),
)
_CHECK_DURATIONS = ("Interval", "Timeout", "DeregisterCriticalServiceAfter", "TTL")
_CHECK_TYPES = (
    ("TTL", "ttl"),
    ("HTTP", "http"),
    ("TCP", "tcp"),
    ("UDP", "udp"),
    ("GRPC", "grpc"),
    ("H2PING", "h2ping"),
    ("OSService", "os_service"),
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def _parse_go_duration(text: str) -> int:
    """time.ParseDuration: "1m30s" -> nanoseconds. Raises ValueError like Go's error text."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    total, pos = 0.0, 0
    while pos < len(body):
        part = _DURATION_PART.match(body, pos)
        if part is None:
            break
        total += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        pos = part.end()
    if not body or pos != len(body):
        raise ValueError(f'time: invalid duration "{text}"')
    return -int(total) if text.startswith("-") else int(total)


def _go_duration(ns: int) -> str:
    """time.Duration.String: the form Consul renders check intervals in ("1m30s", "500ms")."""

    def trim(value: float) -> str:
        return f"{value:.9f}".rstrip("0").rstrip(".")

    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{trim(ns / 1e3)}\u00b5s"
    if ns < 1_000_000_000:
        return f"{sign}{trim(ns / 1e6)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if hours or minutes else ""
    return f"{sign}{text}{trim(rest / 1e9)}s"


def _check_definition(fields: _Fields | None) -> dict[str, Any]:
    definition: dict[str, Any] = {}
    if fields is None:
        return definition
    for name, kind in _CHECK_DEFINITION_FIELDS:
        value = fields.raw(name, kind, kind.__name__)
        if value not in (None, "", False, {}):
            definition[name] = value
    for name in _CHECK_DURATIONS:
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            ns = value  # Go durations may be sent as nanoseconds
        elif isinstance(value, str):
            try:
                ns = _parse_go_duration(value)
            except ValueError as exc:
                raise _DecodeError(str(exc)) from None
        elif value is None:
            continue
        else:
            raise _DecodeError(
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                f"HealthCheckDefinition.{name} of type time.Duration"
            )
        if ns:
            definition[name] = _go_duration(ns)
    return definition


def _check_record(fields: _Fields, node: str) -> dict[str, Any]:
    definition = _check_definition(fields.sub("Definition", "structs.HealthCheckDefinition"))
    check_type = next((kind for name, kind in _CHECK_TYPES if definition.get(name)), "")
    name = fields.string("Name")
    return {
        "Node": fields.string("Node") or node,
        "CheckID": fields.string("CheckID") or name,
        "Name": name,
        "Status": fields.string("Status") or "critical",
        "Notes": fields.string("Notes"),
        "Output": fields.string("Output"),
        "ServiceID": fields.string("ServiceID"),
        "ServiceName": fields.string("ServiceName"),
        "ServiceTags": fields.str_list("ServiceTags") or [],
        "Type": check_type,
        "Interval": definition.get("Interval", ""),
        "Timeout": definition.get("Timeout", ""),
        "ExposedPort": fields.integer("ExposedPort"),
        "Definition": definition,
    }


def _validate_upstreams(proxy: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    keys: set[tuple[str, ...]] = set()
    binds: set[str] = set()
    for raw in proxy.get("Upstreams") or []:
        upstream = _Fields(raw, "structs.Upstream")
        name = upstream.string("DestinationName")
        central = upstream.boolean("CentrallyConfigured")
        port, socket_path = (
            upstream.integer("LocalBindPort"),
            upstream.string("LocalBindSocketPath"),
        )
        if not name:
            errors.append("upstream destination name cannot be empty")
            continue
        if not port and not socket_path and not central:
            errors.append(
                "upstream local bind port or local socket path must be defined and nonzero"
            )
            continue
        key = (upstream.string("DestinationType") or "service", name, upstream.string("Datacenter"))
        if key in keys:
            errors.append(f"upstreams cannot contain duplicates of {key[0]}:{key[1]}")
            continue
        keys.add(key)
        bind = socket_path or f"{upstream.string('LocalBindAddress') or '127.0.0.1'}:{port}"
        if bind in binds and not central:
            errors.append(
                "upstreams cannot contain duplicates by local bind address and port or unix "
                f'path; "{bind}" is specified twice'
            )
            continue
        binds.add(bind)
    return errors


def _validate_service(record: dict[str, Any]) -> list[str]:
    """agent/structs NodeService.Validate (the parts that apply to a catalog-only service)."""
    errors: list[str] = []
    kind = record.get("Kind", "")
    proxy = record["Proxy"]
    port, socket_path = record.get("Port", 0), record.get("SocketPath", "")
    native = bool(record["Connect"].get("Native"))
    if kind == "connect-proxy":
        if not port and not socket_path:
            errors.append("Port or SocketPath must be set for a connect-proxy")
        destination = proxy.get("DestinationServiceName", "")
        if not destination.strip():
            errors.append(
                "Proxy.DestinationServiceName must be non-empty for Connect proxy services"
            )
        if destination == "*":
            errors.append(
                "Proxy.DestinationServiceName must not be a wildcard for Connect proxy services"
            )
        if native:
            errors.append("A Proxy cannot also be Connect Native, only typical services")
        errors.extend(_validate_upstreams(proxy))
    if kind in GATEWAY_KINDS:
        if not port and kind not in ("ingress-gateway", "api-gateway"):
            errors.append(f"Port must be non-zero for a {kind}")
        for name in (
            "DestinationServiceName",
            "DestinationServiceID",
            "LocalServiceAddress",
            "LocalServicePort",
            "LocalServiceSocketPath",
            "Upstreams",
        ):
            if proxy.get(name):
                errors.append(f"The Proxy.{name} configuration is invalid for a {kind}")
    if native and not port and not socket_path:
        errors.append("Port or SocketPath must be set for a Connect native service.")
    return errors


def _service_pre_apply(record: dict[str, Any], *, require_id: bool = True) -> None:
    """agent/consul/catalog_endpoint.go servicePreApply (minus the ACL part). Mutates the ID."""
    errors = _validate_service(record)
    if errors:
        raise _HTTPError(500, _multierror(errors))
    if not record["ID"] and record["Service"]:
        record["ID"] = record["Service"]
    if record["ID"] and not record["Service"]:
        raise _HTTPError(
            500, "Must provide service name (Service.Service) when service ID is provided"
        )
    if not record["ID"] and require_id:
        # Consul would hand an empty ID to memdb and fail there; name the actual problem.
        raise _HTTPError(500, "Must provide service name (Service.Service)")
    if record["Address"] in ("0.0.0.0", "::", "[::]"):
        raise _HTTPError(500, "Invalid service address")


def _validate_service_meta(record: dict[str, Any], node: str) -> None:
    """structs.ValidateServiceMetadata, raised inside the state store like Consul does."""
    meta = record.get("Meta") or {}
    problem = ""
    if len(meta) > 64:
        problem = "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in meta.items():
        if problem:
            break
        if not key:
            problem = "Key cannot be blank"
        elif not META_KEY_RE.match(key):
            problem = "Key contains invalid characters"
        elif len(key) > 128:
            problem = "Key is too long (limit: 128 characters)"
        elif key.startswith("consul-"):
            problem = "Key prefix 'consul-' is reserved for internal use"
        elif len(value) > 512:
            problem = "Value is too long (limit: 512 characters)"
    if problem:
        raise _RaftError(
            f"Invalid Service Meta for node {node} and serviceID {record['ID']}: {problem}"
        )


def _without_indexes(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("CreateIndex", "ModifyIndex")}


# --------------------------------------------------------------------------------------------
# The state store


@dataclass
class _Tables:
    """Every table as a dict of immutable records: a snapshot is a shallow copy of each dict."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower(node) -> Node
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    checks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    kv: dict[str, dict[str, Any]] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    config: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    indexes: dict[str, int] = field(default_factory=dict)  # table name -> max index
    service_indexes: dict[str, int] = field(default_factory=dict)  # service name -> index

    def copy(self) -> _Tables:
        return _Tables(**{name: dict(getattr(self, name)) for name in self.__dataclass_fields__})


class _Store:
    """Consul's catalog, KV, config-entry and ACL state, with raft-like indexes."""

    def __init__(self, datacenter: str) -> None:
        self.datacenter = datacenter
        self.index = 0
        self.t = _Tables()
        self.warnings: list[str] = []

    # -- raft-like application
    def apply(self, write: Callable[[int], Any]) -> Any:
        """Run ``write`` as one raft entry: all of it or nothing, index consumed either way."""
        idx = self.index + 1
        snapshot = self.t.copy()
        try:
            return write(idx)
        except _RaftError:
            self.t = snapshot
            raise
        finally:
            self.index = idx

    def _touch(self, idx: int, *tables: str) -> None:
        for table in tables:
            self.t.indexes[table] = idx

    def table_index(self, *tables: str) -> int:
        return max((self.t.indexes.get(table, 0) for table in tables), default=0)

    # -- nodes
    def node(self, name: str) -> dict[str, Any] | None:
        return self.t.nodes.get(name.lower())

    def node_services(self, name: str) -> list[dict[str, Any]]:
        key = name.lower()
        return [s for (n, _), s in sorted(self.t.services.items()) if n == key]

    def node_checks(self, name: str) -> list[dict[str, Any]]:
        key = name.lower()
        return [c for (n, _), c in sorted(self.t.checks.items()) if n == key]

    def ensure_node(self, idx: int, node: dict[str, Any]) -> dict[str, Any]:
        existing = self.node(node["Node"])
        if existing is not None and _without_indexes(existing) == node:
            return existing
        record = {
            **node,
            "CreateIndex": existing["CreateIndex"] if existing else idx,
            "ModifyIndex": idx,
        }
        self.t.nodes[node["Node"].lower()] = record
        self._touch(idx, "nodes")
        for service in self.node_services(node["Node"]):
            self.t.service_indexes[service["Service"]] = idx
        return record

    def delete_node(self, idx: int, name: str) -> bool:
        key = name.lower()
        if key not in self.t.nodes:
            return False
        for service in self.node_services(name):
            self.delete_service(idx, name, service["ID"])
        for check in self.node_checks(name):
            self.delete_check(idx, name, check["CheckID"])
        del self.t.nodes[key]
        self._touch(idx, "nodes")
        return True

    # -- services
    def service(self, node: str, service_id: str) -> dict[str, Any] | None:
        return self.t.services.get((node.lower(), service_id))

    def ensure_service(self, idx: int, node: str, service: dict[str, Any]) -> dict[str, Any]:
        _validate_service_meta(service, node)
        if self.node(node) is None:
            raise _RaftError("Missing node registration")
        key = (node.lower(), service["ID"])
        existing = self.t.services.get(key)
        if existing is not None and _without_indexes(existing) == service:
            return existing
        record = {
            **service,
            "CreateIndex": existing["CreateIndex"] if existing else idx,
            "ModifyIndex": idx,
        }
        self.t.services[key] = record
        self._touch(idx, "services")
        self.t.service_indexes[service["Service"]] = idx
        if existing is not None:
            self.t.service_indexes[existing["Service"]] = idx
        return record

    def delete_service(self, idx: int, node: str, service_id: str) -> bool:
        key = (node.lower(), service_id)
        existing = self.t.services.pop(key, None)
        if existing is None:
            return False
        for check in self.node_checks(node):
            if check["ServiceID"] == service_id:
                self.delete_check(idx, node, check["CheckID"])
        self._touch(idx, "services")
        self.t.service_indexes[existing["Service"]] = idx
        return True

    def instances(self, name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(node, service) pairs of one service name, in Consul's (node, ID) order."""
        pairs = []
        for (node_key, _), service in sorted(self.t.services.items()):
            if service["Service"] == name:
                pairs.append((self.t.nodes[node_key], service))
        return pairs

    # -- checks
    def check(self, node: str, check_id: str) -> dict[str, Any] | None:
        return self.t.checks.get((node.lower(), check_id))

    def ensure_check(self, idx: int, check: dict[str, Any]) -> dict[str, Any]:
        node = check["Node"]
        if self.node(node) is None:
            raise _RaftError("Missing node registration")
        check = dict(check)
        if check["ServiceID"]:
            service = self.service(node, check["ServiceID"])
            if service is None:
                raise _RaftError("Missing service registration")
            check["ServiceName"] = service["Service"]
            check["ServiceTags"] = list(service["Tags"])
        if check["CheckID"] == "serfHealth":
            self.warnings.append(
                f"check 'serfHealth' written on node {node!r}: that check belongs to Consul "
                "agents, a catalog-only registration must never carry it"
            )
        key = (node.lower(), check["CheckID"])
        existing = self.t.checks.get(key)
        if existing is not None and _without_indexes(existing) == check:
            return existing
        record = {
            **check,
            "CreateIndex": existing["CreateIndex"] if existing else idx,
            "ModifyIndex": idx,
        }
        self.t.checks[key] = record
        self._touch(idx, "checks")
        self._touch_check_services(idx, record)
        return record

    def _touch_check_services(self, idx: int, check: dict[str, Any]) -> None:
        if check["ServiceID"]:
            self.t.service_indexes[check["ServiceName"]] = idx
        else:
            for service in self.node_services(check["Node"]):
                self.t.service_indexes[service["Service"]] = idx

    def delete_check(self, idx: int, node: str, check_id: str) -> bool:
        existing = self.t.checks.pop((node.lower(), check_id), None)
        if existing is None:
            return False
        self._touch(idx, "checks")
        self._touch_check_services(idx, existing)
        return True

    def service_query_index(self, name: str, *, with_checks: bool) -> int:
        """state.maxIndexForService: the service's own index, or the tables' when it is gone."""
        if self.instances(name) and name in self.t.service_indexes:
            return self.t.service_indexes[name]
        tables = ("nodes", "services", "checks") if with_checks else ("nodes", "services")
        return max(self.table_index(*tables), self.t.service_indexes.get(name, 0))

    # -- registration (catalog register: node, service and checks in one raft entry)
    def register(
        self,
        idx: int,
        node: dict[str, Any],
        service: dict[str, Any] | None,
        checks: list[dict[str, Any]],
        *,
        skip_node_update: bool,
    ) -> None:
        existing = self.node(node["Node"])
        if existing is None or not skip_node_update:
            self.ensure_node(idx, node)
        if service is not None:
            try:
                self.ensure_service(idx, node["Node"], service)
            except _RaftError as exc:
                raise _RaftError(f"failed inserting service: {exc}") from None
        for check in checks:
            if check["Node"].lower() != node["Node"].lower():
                raise _RaftError(
                    f'check node "{check["Node"]}" does not match node "{node["Node"]}"'
                )
            try:
                self.ensure_check(idx, check)
            except _RaftError as exc:
                raise _RaftError(
                    f'failed inserting check on node "{node["Node"]}": {exc}'
                ) from None

    # -- KV
    def kv_index(self) -> int:
        return self.table_index("kvs", "tombstones")

    def kv_prefix_index(self, prefix: str) -> int:
        """state.kvsListTxn: newest entry or tombstone under the prefix, else the table index."""
        if not prefix:
            return self.kv_index()
        newest = max(
            [e["ModifyIndex"] for k, e in self.t.kv.items() if k.startswith(prefix)]
            + [i for k, i in self.t.tombstones.items() if k.startswith(prefix)],
            default=0,
        )
        return newest or self.kv_index()

    def kv_set(self, idx: int, key: str, value: bytes | None, flags: int) -> dict[str, Any]:
        existing = self.t.kv.get(key)
        entry = {
            "LockIndex": existing["LockIndex"] if existing else 0,
            "Key": key,
            "Flags": flags,
            "Value": value or None,
            "Session": existing["Session"] if existing else "",
        }
        if existing is not None and _without_indexes(existing) == entry:
            return existing
        record = {
            **entry,
            "CreateIndex": existing["CreateIndex"] if existing else idx,
            "ModifyIndex": idx,
        }
        self.t.kv[key] = record
        self._touch(idx, "kvs")
        return record

    def kv_cas(
        self, idx: int, key: str, value: bytes | None, flags: int, cas: int
    ) -> dict[str, Any] | None:
        existing = self.t.kv.get(key)
        if (cas == 0 and existing is not None) or (cas != 0 and existing is None):
            return None
        if existing is not None and existing["ModifyIndex"] != cas:
            return None
        return self.kv_set(idx, key, value, flags)

    def kv_delete(self, idx: int, key: str) -> None:
        if self.t.kv.pop(key, None) is not None:
            self.t.tombstones[key] = idx
            self._touch(idx, "kvs", "tombstones")

    def kv_delete_cas(self, idx: int, key: str, cas: int) -> bool:
        existing = self.t.kv.get(key)
        if existing is None:
            return True  # state/kvs.go: `return entry == nil, nil`
        if existing["ModifyIndex"] != cas:
            return False
        self.kv_delete(idx, key)
        return True

    def kv_delete_tree(self, idx: int, prefix: str) -> None:
        for key in [k for k in self.t.kv if k.startswith(prefix)]:
            self.kv_delete(idx, key)

    def kv_list(self, prefix: str) -> list[dict[str, Any]]:
        return [self.t.kv[k] for k in sorted(self.t.kv) if k.startswith(prefix)]

    # -- config entries
    def config_set(self, idx: int, entry: dict[str, Any]) -> None:
        key = (entry["Kind"], entry["Name"])
        existing = self.t.config.get(key)
        self.t.config[key] = {
            **entry,
            "CreateIndex": existing["CreateIndex"] if existing else idx,
            "ModifyIndex": idx,
        }
        self._touch(idx, "config-entries")

    def config_delete(self, idx: int, kind: str, name: str) -> None:
        if self.t.config.pop((kind, name), None) is not None:
            self._touch(idx, "config-entries")

    # -- ACL
    def policy_by_name(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.t.policies.values() if p["Name"] == name), None)

    def token_by_secret(self, secret: str) -> dict[str, Any] | None:
        return next((t for t in self.t.tokens.values() if t["SecretID"] == secret), None)


# --------------------------------------------------------------------------------------------
# JSON views (deep copies, so callers can never mutate state)


def _node_view(node: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(node)


def _node_service_view(service: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(service)


def _service_node_view(node: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {
        "ID": node["ID"],
        "Node": node["Node"],
        "Address": node["Address"],
        "Datacenter": node["Datacenter"],
        "TaggedAddresses": node["TaggedAddresses"],
        "NodeMeta": node["Meta"],
        "ServiceKind": service.get("Kind", ""),
        "ServiceID": service["ID"],
        "ServiceName": service["Service"],
        "ServiceTags": service["Tags"],
        "ServiceAddress": service["Address"],
    }
    if service.get("TaggedAddresses"):
        view["ServiceTaggedAddresses"] = service["TaggedAddresses"]
    view["ServiceWeights"] = service["Weights"]
    view["ServiceMeta"] = service["Meta"]
    view["ServicePort"] = service.get("Port", 0)
    if service.get("SocketPath"):
        view["ServiceSocketPath"] = service["SocketPath"]
    view["ServiceEnableTagOverride"] = service["EnableTagOverride"]
    view["ServiceProxy"] = service["Proxy"]
    view["ServiceConnect"] = service["Connect"]
    view["CreateIndex"] = service["CreateIndex"]
    view["ModifyIndex"] = service["ModifyIndex"]
    return copy.deepcopy(view)


def _check_view(check: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(check)


def _kv_view(entry: dict[str, Any], *, with_value: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "LockIndex": entry["LockIndex"],
        "Key": entry["Key"],
        "Flags": entry["Flags"],
        "Value": None,
    }
    if with_value and entry["Value"] is not None:
        view["Value"] = base64.b64encode(entry["Value"]).decode()
    if entry["Session"]:
        view["Session"] = entry["Session"]
    view["CreateIndex"] = entry["CreateIndex"]
    view["ModifyIndex"] = entry["ModifyIndex"]
    return view


# --------------------------------------------------------------------------------------------
# Recording and faults


@dataclass
class RecordedRequest:
    """One request the double received. ``status`` 0 means the connection was dropped."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    body: bytes


@dataclass
class _Fault:
    kind: Literal["status", "refuse", "delay"]
    path_prefix: str
    method: str | None
    status: int
    delay: float
    times: int

    def matches(self, method: str, path: str) -> bool:
        method_ok = self.method is None or self.method.upper() == method
        return method_ok and path.startswith(self.path_prefix)


_FAULT_TEXT = {
    429: "rate limit exceeded, try again later or against a different server",
    500: "rpc error making call: injected fault",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


# --------------------------------------------------------------------------------------------
# HTTP plumbing


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    index: int | None = None  # set for queries: becomes X-Consul-Index (and drives blocking)


def _json_reply(payload: JSON, status: int = 200) -> _Reply:
    return _Reply(status=status, body=_dumps(payload))


def _dumps(payload: JSON) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _text_reply(status: int, text: str) -> _Reply:
    return _Reply(status=status, body=text.encode(), content_type="text/plain; charset=utf-8")


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    anonymous: bool = False  # ACLs on and no token: Consul's anonymous token (default deny)
    token: str = ""

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def flag(self, name: str) -> bool:
        return name in self.query

    def json(self, struct: str, prefix: str) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise _HTTPError(400, f"{prefix}{exc}") from None


_Handler = Callable[["ConsulDouble", _Request, re.Match[str]], _Reply]


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    methods: tuple[str, ...]
    handler: _Handler
    query: bool = False  # a read that supports blocking and sets X-Consul-* headers
    status_endpoint: bool = False  # no leader, no ACL needed


def _route(
    pattern: str, methods: str, *, query: bool = False, status_endpoint: bool = False
) -> Callable[[_Handler], _Handler]:
    def register(handler: _Handler) -> _Handler:
        _ROUTES.append(
            _Route(
                re.compile(pattern),
                tuple(methods.split()),
                handler,
                query=query,
                status_endpoint=status_endpoint,
            )
        )
        return handler

    return register


_ROUTES: list[_Route] = []


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    double: ConsulDouble

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Dropped connections are normal here (refuse faults, stop()); stay quiet about them."""


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``requests`` instead of stderr."""

    def setup(self) -> None:
        super().setup()
        self.server.double._track(self.connection, opened=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.double._track(self.connection, opened=False)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        request = _Request(
            method=self.command,
            path=unquote(split.path),
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        reply = self.server.double._dispatch(request)
        if reply is None:  # refuse: drop the connection without a response
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client went away (or stop() dropped the connection)
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve


# --------------------------------------------------------------------------------------------
# The double


class ConsulDouble:
    """A Consul server (single-node cluster, one datacenter) speaking the HTTP API on 127.0.0.1.

    acl_tokens: None disables ACLs; otherwise the SecretIDs accepted for HTTP auth (in
    ``X-Consul-Token``, ``Authorization: Bearer`` or ``?token=``), with default-deny for anonymous.
    datacenter: the only datacenter; requests for another get 500 "No path to datacenter".
    """

    def __init__(self, *, acl_tokens: Iterable[str] | None = None, datacenter: str = "dc1") -> None:
        self._cond = threading.Condition()
        self._store = _Store(datacenter)
        self._initial_tokens: frozenset[str] | None = (
            None if acl_tokens is None else frozenset(acl_tokens)
        )
        self._faults: list[_Fault] = []
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._blocked = 0
        self.datacenter = datacenter
        self.url = ""
        self.latency = 0.0
        self.has_leader = True
        self.requests: list[RecordedRequest] = []
        self.internal_errors: list[str] = []  # bugs in the double itself; fixtures assert empty

    # -- lifecycle
    def start(self) -> ConsulDouble:
        server = _Server(("127.0.0.1", 0), _RequestHandler)
        server.double = self
        self._server = server
        self._stopping = False
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},  # shutdown() waits up to one interval
            name="consul-double",
            daemon=True,
        )
        self._thread.start()
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        return self

    def stop(self) -> None:
        """Stop serving, wake blocked queries and drop open keep-alive connections."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            connections = list(self._connections)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ConsulDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _track(self, connection: socket.socket, *, opened: bool) -> None:
        with self._cond:
            if opened:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    # -- configuration at runtime
    @property
    def index(self) -> int:
        """The raft-like index: every accepted write consumes one."""
        with self._cond:
            return self._store.index

    @property
    def blocked_queries(self) -> int:
        """Blocking queries waiting right now: lets a test write only once a watcher waits."""
        with self._cond:
            return self._blocked

    @property
    def warnings(self) -> list[str]:
        """Things Consul accepts but this project must never do (e.g. a 'serfHealth' check)."""
        with self._cond:
            return list(self._store.warnings)

    def set_tokens(self, tokens: Iterable[str] | None) -> None:
        """Replace the initial tokens (None turns ACLs off). API-created tokens stay valid."""
        with self._cond:
            self._initial_tokens = None if tokens is None else frozenset(tokens)

    def inject(
        self,
        *,
        kind: Literal["status", "refuse", "delay"],
        path_prefix: str = "/",
        method: str | None = None,
        status: int = 500,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` matching requests fail (-1: all of them), oldest fault first.

        status: answer ``status`` without touching state (429/503 carry ``Retry-After: 1``).
        refuse: close the connection without any response. delay: sleep, then serve normally.
        """
        if kind not in ("status", "refuse", "delay"):
            raise ValueError(f"kind must be 'status', 'refuse' or 'delay', got {kind!r}")
        if times == 0 or times < -1:
            raise ValueError(f"times must be a positive count or -1 (forever), got {times}")
        if kind == "status" and not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay}")
        with self._cond:
            self._faults.append(_Fault(kind, path_prefix, method, status, delay, times))

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    # -- recorded traffic
    def reset_requests(self) -> None:
        with self._cond:
            self.requests.clear()

    def count(self, *, method: str | None = None, path_prefix: str = "/") -> int:
        with self._cond:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)
            )

    def writes(self) -> int:
        """Recorded PUT/POST/DELETE requests, whatever their outcome (faults included)."""
        with self._cond:
            return sum(1 for r in self.requests if r.method in WRITE_METHODS)

    # -- direct state inspection (deep copies in Consul's JSON shapes)
    def nodes(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {n["Node"]: _node_view(n) for n in self._store.t.nodes.values()}

    def services(self, node: str | None = None) -> list[dict[str, Any]]:
        """Catalog/service shaped entries (ServiceNode), for one node or all, by (node, ID)."""
        with self._cond:
            store = self._store
            return [
                _service_node_view(store.t.nodes[node_key], service)
                for (node_key, _), service in sorted(store.t.services.items())
                if node is None or node_key == node.lower()
            ]

    def checks(self, node: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [
                _check_view(check)
                for (node_key, _), check in sorted(self._store.t.checks.items())
                if node is None or node_key == node.lower()
            ]

    def kv(self) -> dict[str, tuple[bytes, int]]:
        with self._cond:
            return {
                key: (entry["Value"] or b"", entry["ModifyIndex"])
                for key, entry in sorted(self._store.t.kv.items())
            }

    def config_entries(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._store.t.config)

    def acl_policies(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._store.t.policies)

    def acl_tokens(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {a: self._token_view(t) for a, t in self._store.t.tokens.items()}

    # -- seeding without HTTP (not recorded; consumes raft indexes like the HTTP calls)
    def seed_register(self, registration: dict[str, Any]) -> None:
        """Apply a /v1/catalog/register body directly. Raises ValueError on a rejected body."""
        request = _Request("PUT", "/v1/catalog/register", {}, {}, _dumps(registration))
        self._seed(lambda: _catalog_register(self, request, _EMPTY_MATCH))

    def seed_kv(self, key: str, value: bytes, flags: int = 0) -> int:
        """Set a KV entry directly; returns its ModifyIndex."""
        with self._cond:
            entry = self._store.apply(lambda idx: self._store.kv_set(idx, key, value, flags))
            self._cond.notify_all()
            modify_index: int = entry["ModifyIndex"]
            return modify_index

    def seed_config_entry(self, entry: dict[str, Any]) -> None:
        """Apply a /v1/config body directly. Raises ValueError on a rejected entry."""
        request = _Request("PUT", "/v1/config", {}, {}, _dumps(entry))
        self._seed(lambda: _config_apply(self, request, _EMPTY_MATCH))

    def _seed(self, call: Callable[[], _Reply]) -> None:
        with self._cond:
            try:
                reply = call()
            except (_HTTPError, _RaftError) as exc:
                raise ValueError(f"Consul would reject this: {exc}") from None
            finally:
                self._cond.notify_all()
            if reply.status != 200:
                raise ValueError(f"Consul would reject this: {reply.body.decode()}")

    # -- request handling
    def _take_fault(self, request: _Request) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(request.method, request.path):
                if fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _record(self, request: _Request, status: int) -> None:
        self.requests.append(
            RecordedRequest(
                request.method, request.path, copy.deepcopy(request.query), status, request.body
            )
        )

    def _dispatch(self, request: _Request) -> _Reply | None:
        if self.latency > 0:
            time.sleep(self.latency)
        with self._cond:
            fault = self._take_fault(request)
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay)
        elif fault is not None:
            with self._cond:
                self._record(request, 0 if fault.kind == "refuse" else fault.status)
            if fault.kind == "refuse":
                return None
            reply = _text_reply(
                fault.status, _FAULT_TEXT.get(fault.status, f"injected fault {fault.status}")
            )
            if fault.status in (429, 503):
                reply.headers["Retry-After"] = "1"
            return reply
        try:
            reply = self._handle(request)
        except _HTTPError as exc:
            reply = _text_reply(exc.status, exc.message)
            reply.headers.update(exc.headers)
        except _RaftError as exc:
            reply = _text_reply(500, str(exc))
        except Exception as exc:  # a bug in the double: answer, and make the fixture fail
            with self._cond:
                self.internal_errors.append(f"{request.method} {request.path}: {exc!r}")
            reply = _text_reply(500, f"consul double internal error: {exc!r}")
        with self._cond:
            self._record(request, reply.status)
        return reply

    def _handle(self, request: _Request) -> _Reply:
        route, match = self._find_route(request)
        if not route.status_endpoint:
            self._check_leader_and_dc(request)
            self._authenticate(request)
        if route.query and request.method == "GET":
            return self._run_query(route, request, match)
        with self._cond:
            try:
                return route.handler(self, request, match)
            finally:
                self._cond.notify_all()

    def _find_route(self, request: _Request) -> tuple[_Route, re.Match[str]]:
        allowed: list[str] = []
        for route in _ROUTES:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            if request.method in route.methods:
                return route, match
            allowed.extend(route.methods)
        if allowed:
            methods = ",".join(("OPTIONS", *allowed))
            raise _HTTPError(405, f"method {request.method} not allowed", {"Allow": methods})
        raise _HTTPError(404, "Invalid URL path: not a recognized HTTP API endpoint\n")

    def _check_leader_and_dc(self, request: _Request) -> None:
        stale_read = request.method == "GET" and request.flag("stale")
        if not self.has_leader and not stale_read:
            raise _HTTPError(500, "No cluster leader")
        dc = request.param("dc")
        if dc and dc != self.datacenter:
            raise _HTTPError(500, "No path to datacenter")

    def _authenticate(self, request: _Request) -> None:
        token = request.headers.get("x-consul-token", "")
        authorization = request.headers.get("authorization", "")
        if not token and authorization.lower().startswith("bearer "):
            token = authorization[len("bearer ") :].strip()
        token = token or (request.param("token") or "")
        request.token = token
        with self._cond:
            initial = self._initial_tokens
            if initial is None:
                return
            if not token:
                request.anonymous = True
                return
            if token not in initial and self._store.token_by_secret(token) is None:
                raise _HTTPError(403, "ACL not found")

    def _run_query(self, route: _Route, request: _Request, match: re.Match[str]) -> _Reply:
        min_index, wait = _blocking_params(request)
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                reply = route.handler(self, request, match)
                index = reply.index or 0
                remaining = deadline - time.monotonic()
                if min_index == 0 or index > min_index or remaining <= 0 or self._stopping:
                    break
                self._blocked += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._blocked -= 1
        reply.headers["X-Consul-Index"] = str(max(reply.index or 0, 1))
        reply.headers["X-Consul-KnownLeader"] = "true" if self.has_leader else "false"
        reply.headers["X-Consul-LastContact"] = "0"
        return reply

    def _acl_enabled(self) -> bool:
        return self._initial_tokens is not None

    def _token_view(self, token: dict[str, Any]) -> dict[str, Any]:
        view = copy.deepcopy(token)
        links = []
        for link in token.get("Policies") or []:
            policy = self._store.t.policies.get(link["ID"])
            if policy is not None:  # links to deleted policies vanish on read, as in Consul
                links.append({"ID": policy["ID"], "Name": policy["Name"]})
        if links:
            view["Policies"] = links
        else:
            view.pop("Policies", None)
        return view


def _empty_match() -> re.Match[str]:
    """Handlers take the route's match; seeding calls them without a URL."""
    match = re.fullmatch("", "")
    assert match is not None
    return match


_EMPTY_MATCH = _empty_match()


def _blocking_params(request: _Request) -> tuple[int, float]:
    wait = DEFAULT_WAIT
    raw_wait = request.param("wait")
    if raw_wait:
        try:
            wait = min(_parse_go_duration(raw_wait) / 1e9, MAX_WAIT)
        except ValueError:
            raise _HTTPError(400, "Invalid wait time") from None
    raw_index = request.param("index")
    min_index = 0
    if raw_index:
        if not raw_index.isdigit():
            raise _HTTPError(400, "Invalid index")
        min_index = int(raw_index)
    return min_index, wait


def _query(payload: JSON, index: int, *, filtered: bool = False) -> _Reply:
    reply = _json_reply(payload)
    reply.index = index
    if filtered:
        reply.headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return reply


def _filter(request: _Request, schema: _Schema) -> _Predicate | None:
    expression = request.param("filter")
    if not expression:
        return None
    try:
        return _compile_filter(expression, schema)
    except _FilterError as exc:
        raise _HTTPError(500, f"Failed to create boolean expression evaluator: {exc}") from None


def _node_meta_filter(request: _Request) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for raw in request.query.get("node-meta", []):
        key, _, value = raw.partition(":")
        pairs[key] = value
    return pairs


def _meta_matches(meta: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    meta = meta or {}
    return all(meta.get(k) == v for k, v in wanted.items())


def _decode(request: _Request, struct: str, prefix: str) -> _Fields:
    try:
        return _Fields(request.json(struct, prefix), struct)
    except _DecodeError as exc:
        raise _HTTPError(400, f"{prefix}{exc}") from None


# --------------------------------------------------------------------------------------------
# /v1/status


@_route(r"/v1/status/leader", "GET", status_endpoint=True)
def _status_leader(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    return _json_reply(LEADER_ADDRESS if double.has_leader else "")


@_route(r"/v1/status/peers", "GET", status_endpoint=True)
def _status_peers(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    return _json_reply([LEADER_ADDRESS] if double.has_leader else [])


# --------------------------------------------------------------------------------------------
# /v1/catalog writes


def _decode_registration(
    request: _Request, datacenter: str
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]], bool]:
    prefix = "Request decode failed: "
    body = _decode(request, "structs.RegisterRequest", prefix)
    try:
        node_name = body.string("Node")
        node = {
            "ID": body.string("ID"),
            "Node": node_name,
            "Address": body.string("Address"),
            "Datacenter": body.string("Datacenter") or datacenter,
            "TaggedAddresses": body.str_map("TaggedAddresses"),
            "Meta": body.str_map("NodeMeta"),
        }
        service_fields = body.sub("Service", "structs.NodeService")
        service = None
        if service_fields is not None:
            service = _service_record(service_fields, txn_subset=False)
        checks = []
        single = body.sub("Check", "structs.HealthCheck")
        if single is not None:
            checks.append(_check_record(single, node_name))
        for raw in body.raw("Checks", list, "structs.HealthChecks") or []:
            checks.append(_check_record(_Fields(raw, "structs.HealthCheck"), node_name))
        skip = body.boolean("SkipNodeUpdate")
    except _DecodeError as exc:
        raise _HTTPError(400, f"{prefix}{exc}") from None
    return node, service, checks, skip


@_route(r"/v1/catalog/register", "PUT")
def _catalog_register(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    node, service, checks, skip = _decode_registration(request, double.datacenter)
    if node["Datacenter"] != double.datacenter:
        raise _HTTPError(500, "No path to datacenter")
    if not node["Node"]:
        raise _HTTPError(500, "Must provide node")
    if node["ID"] and not UUID_RE.match(node["ID"]):
        raise _HTTPError(500, f"Bad node ID: uuid string is wrong length: {node['ID']!r}")
    if not node["Address"] and not skip:
        raise _HTTPError(500, "Must provide address if SkipNodeUpdate is not set")
    if service is not None:
        _service_pre_apply(service)
    if request.anonymous:
        resource = service["Service"] if service is not None else node["Node"]
        permission = "service:write" if service is not None else "node:write"
        raise _denied(permission, resource)
    store.apply(lambda idx: store.register(idx, node, service, checks, skip_node_update=skip))
    return _json_reply(True)


@_route(r"/v1/catalog/deregister", "PUT")
def _catalog_deregister(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    prefix = "Request decode failed: "
    body = _decode(request, "structs.DeregisterRequest", prefix)
    try:
        node, service_id, check_id = (
            body.string("Node"),
            body.string("ServiceID"),
            body.string("CheckID"),
        )
        datacenter = body.string("Datacenter")
    except _DecodeError as exc:
        raise _HTTPError(400, f"{prefix}{exc}") from None
    if datacenter and datacenter != double.datacenter:
        raise _HTTPError(500, "No path to datacenter")
    if not node:
        raise _HTTPError(500, "Must provide node")
    if request.anonymous:
        raise _denied("node:write", node)

    def write(idx: int) -> None:
        if service_id:
            store.delete_service(idx, node, service_id)
        elif check_id:
            store.delete_check(idx, node, check_id)
        else:
            store.delete_node(idx, node)

    store.apply(write)
    return _json_reply(True)


# --------------------------------------------------------------------------------------------
# /v1/catalog and /v1/health reads


@_route(r"/v1/catalog/datacenters", "GET", status_endpoint=True)
def _catalog_datacenters(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    return _json_reply([double.datacenter])


@_route(r"/v1/catalog/nodes", "GET", query=True)
def _catalog_nodes(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    predicate = _filter(request, NODE_SCHEMA)
    wanted = _node_meta_filter(request)
    index = store.table_index("nodes")
    if request.anonymous:
        return _query([], index, filtered=bool(store.t.nodes))
    nodes = [
        _node_view(store.t.nodes[key])
        for key in sorted(store.t.nodes)
        if _meta_matches(store.t.nodes[key]["Meta"], wanted)
    ]
    return _query([n for n in nodes if predicate is None or predicate(n)], index)


@_route(r"/v1/catalog/services", "GET", query=True)
def _catalog_services(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    predicate = _filter(request, SERVICE_NODE_SCHEMA)
    wanted = _node_meta_filter(request)
    index = store.table_index("services")
    if request.anonymous:
        return _query({}, index, filtered=bool(store.t.services))
    tags: dict[str, set[str]] = {}
    for (node_key, _), service in store.t.services.items():
        node = store.t.nodes[node_key]
        if not _meta_matches(node["Meta"], wanted):
            continue
        if predicate is not None and not predicate(_service_node_view(node, service)):
            continue
        tags.setdefault(service["Service"], set()).update(service["Tags"])
    return _query({name: sorted(tags[name]) for name in sorted(tags)}, index)


def _tags_match(service: dict[str, Any], request: _Request) -> bool:
    wanted = {t.lower() for t in request.query.get("tag", [])}
    return wanted <= {t.lower() for t in service["Tags"]}


def _service_instances(
    double: ConsulDouble, request: _Request, name: str, *, connect: bool
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    store = double._store
    if connect:
        pairs = [
            (store.t.nodes[node_key], service)
            for (node_key, _), service in sorted(store.t.services.items())
            if (
                service.get("Kind") == "connect-proxy"
                and service["Proxy"].get("DestinationServiceName") == name
            )
            or (service["Service"] == name and service["Connect"].get("Native"))
        ]
    else:
        pairs = store.instances(name)
    wanted = _node_meta_filter(request)
    return [
        (node, service)
        for node, service in pairs
        if _meta_matches(node["Meta"], wanted) and _tags_match(service, request)
    ]


def _catalog_service_common(
    double: ConsulDouble, request: _Request, name: str, *, connect: bool
) -> _Reply:
    predicate = _filter(request, SERVICE_NODE_SCHEMA)
    index = double._store.service_query_index(name, with_checks=False)
    pairs = _service_instances(double, request, name, connect=connect)
    if request.anonymous:
        return _query([], index, filtered=bool(pairs))
    views = [_service_node_view(node, service) for node, service in pairs]
    return _query([v for v in views if predicate is None or predicate(v)], index)


@_route(r"/v1/catalog/service/(?P<name>.*)", "GET", query=True)
def _catalog_service(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    if not match["name"]:
        raise _HTTPError(400, "Missing service name")
    return _catalog_service_common(double, request, match["name"], connect=False)


@_route(r"/v1/catalog/connect/(?P<name>.*)", "GET", query=True)
def _catalog_connect(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    if not match["name"]:
        raise _HTTPError(400, "Missing service name")
    return _catalog_service_common(double, request, match["name"], connect=True)


@_route(r"/v1/catalog/node/(?P<node>.*)", "GET", query=True)
def _catalog_node(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    if not match["node"]:
        raise _HTTPError(400, "Missing node name")
    predicate = _filter(request, NODE_SERVICE_SCHEMA)
    index = store.table_index("nodes", "services")
    node = store.node(match["node"])
    if node is None or request.anonymous:
        return _query(None, index, filtered=node is not None)
    services = {
        s["ID"]: _node_service_view(s)
        for s in store.node_services(node["Node"])
        if predicate is None or predicate(_node_service_view(s))
    }
    return _query({"Node": _node_view(node), "Services": services}, index)


@_route(r"/v1/catalog/node-services/(?P<node>.*)", "GET", query=True)
def _catalog_node_services(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    if not match["node"]:
        raise _HTTPError(400, "Missing node name")
    predicate = _filter(request, NODE_SERVICE_SCHEMA)
    index = store.table_index("nodes", "services")
    node = store.node(match["node"])
    if node is None or request.anonymous:
        return _query({"Node": None, "Services": None}, index, filtered=node is not None)
    views = [_node_service_view(s) for s in store.node_services(node["Node"])]
    services = [v for v in views if predicate is None or predicate(v)]
    return _query({"Node": _node_view(node), "Services": services}, index)


def _health_entries(double: ConsulDouble, request: _Request, name: str, *, connect: bool) -> _Reply:
    store = double._store
    predicate = _filter(request, CHECK_SERVICE_NODE_SCHEMA)
    index = store.service_query_index(name, with_checks=True)
    pairs = _service_instances(double, request, name, connect=connect)
    if request.anonymous:
        return _query([], index, filtered=bool(pairs))
    entries = []
    for node, service in pairs:
        checks = [
            _check_view(c)
            for c in store.node_checks(node["Node"])
            if c["ServiceID"] in ("", service["ID"])
        ]
        if request.flag("passing") and any(c["Status"] != "passing" for c in checks):
            continue
        entry = {"Node": _node_view(node), "Service": _node_service_view(service), "Checks": checks}
        if predicate is None or predicate(entry):
            entries.append(entry)
    return _query(entries, index)


@_route(r"/v1/health/service/(?P<name>.*)", "GET", query=True)
def _health_service(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    if not match["name"]:
        raise _HTTPError(400, "Missing service name")
    return _health_entries(double, request, match["name"], connect=False)


@_route(r"/v1/health/connect/(?P<name>.*)", "GET", query=True)
def _health_connect(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    if not match["name"]:
        raise _HTTPError(400, "Missing service name")
    return _health_entries(double, request, match["name"], connect=True)


def _checks_reply(
    double: ConsulDouble, request: _Request, checks: Iterable[dict[str, Any]]
) -> _Reply:
    predicate = _filter(request, HEALTH_CHECK_SCHEMA)
    index = double._store.table_index("checks")
    views = [_check_view(c) for c in checks]
    if request.anonymous:
        return _query([], index, filtered=bool(views))
    return _query([v for v in views if predicate is None or predicate(v)], index)


@_route(r"/v1/health/node/(?P<node>.*)", "GET", query=True)
def _health_node(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    if not match["node"]:
        raise _HTTPError(400, "Missing node name")
    return _checks_reply(double, request, double._store.node_checks(match["node"]))


@_route(r"/v1/health/checks/(?P<name>.*)", "GET", query=True)
def _health_checks(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    if not match["name"]:
        raise _HTTPError(400, "Missing service name")
    checks = sorted(double._store.t.checks.items())
    return _checks_reply(double, request, (c for _, c in checks if c["ServiceName"] == match[1]))


@_route(r"/v1/health/state/(?P<state>.*)", "GET", query=True)
def _health_state(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    state = match["state"]
    if not state:
        raise _HTTPError(400, "Missing check state")
    checks = [c for _, c in sorted(double._store.t.checks.items())]
    return _checks_reply(
        double, request, (c for c in checks if state == "any" or c["Status"] == state)
    )


# --------------------------------------------------------------------------------------------
# /v1/kv


def _parse_uint(request: _Request, name: str) -> int | None:
    raw = request.param(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise _HTTPError(500, f'strconv.ParseUint: parsing "{raw}": invalid syntax')
    return int(raw)


def _conflicting(request: _Request, *flags: str) -> None:
    if sum(1 for f in flags if request.flag(f)) > 1:
        encoded = "&".join(f"{k}={v[0] if v else ''}" for k, v in sorted(request.query.items()))
        raise _HTTPError(400, f"Conflicting flags: {encoded}")


@_route(r"/v1/kv/(?P<key>.*)", "GET", query=True)
def _kv_get(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store, key = double._store, match["key"]
    if request.flag("keys"):
        return _kv_keys(double, request, key)
    if request.flag("recurse"):
        entries = [] if request.anonymous else store.kv_list(key)
        reply = _query([_kv_view(e) for e in entries], store.kv_prefix_index(key))
        if not entries:
            reply.status, reply.body = 404, b""
        return reply
    if not key:
        raise _HTTPError(400, "Missing key name")
    if request.anonymous:
        raise _denied("key:read", key)
    entry = store.t.kv.get(key)
    if entry is None:
        reply = _query(None, store.kv_index())
        reply.status, reply.body = 404, b""
        return reply
    if request.flag("raw"):
        reply = _query(None, entry["ModifyIndex"])
        reply.body = entry["Value"] or b""
        reply.content_type = "text/plain"
        reply.headers["X-Content-Type-Options"] = "nosniff"
        reply.headers["Content-Security-Policy"] = "sandbox"
        return reply
    return _query([_kv_view(entry)], entry["ModifyIndex"])


def _kv_keys(double: ConsulDouble, request: _Request, prefix: str) -> _Reply:
    store = double._store
    separator = request.param("separator") or request.param("seperator") or ""
    keys: list[str] = []
    for entry in [] if request.anonymous else store.kv_list(prefix):
        key = entry["Key"]
        if separator:
            cut = key.find(separator, len(prefix))
            if cut != -1:
                key = key[: cut + len(separator)]
        if not keys or keys[-1] != key:
            keys.append(key)
    reply = _query(keys, store.kv_prefix_index(prefix))
    if not keys and prefix:
        reply.status, reply.body = 404, b""
    return reply


@_route(r"/v1/kv/(?P<key>.*)", "PUT DELETE")
def _kv_write(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store, key = double._store, match["key"]
    if request.method == "DELETE":
        return _kv_delete(double, request, key)
    if not key:
        raise _HTTPError(400, "Missing key name")
    _conflicting(request, "cas", "acquire", "release")
    flags = _parse_uint(request, "flags") or 0
    cas = _parse_uint(request, "cas")
    if len(request.body) > MAX_KV_VALUE:
        raise _HTTPError(
            413,
            f"Request body({len(request.body)} bytes) too large, max size: {MAX_KV_VALUE} bytes. "
            "See https://www.consul.io/docs/agent/config/config-files#kv_max_value_size.",
        )
    if request.anonymous:
        raise _denied("key:write", key)
    session = request.param("acquire") or request.param("release")
    if request.flag("acquire") or request.flag("release"):
        if not session:
            raise _HTTPError(500, "missing session")
        store.apply(lambda idx: None)
        raise _HTTPError(500, f'invalid session "{session}"')
    if cas is None:
        store.apply(lambda idx: store.kv_set(idx, key, request.body, flags))
        return _json_reply(True)
    written = store.apply(lambda idx: store.kv_cas(idx, key, request.body, flags, cas))
    return _json_reply(written is not None)


def _kv_delete(double: ConsulDouble, request: _Request, key: str) -> _Reply:
    store = double._store
    _conflicting(request, "recurse", "cas")
    recurse = request.flag("recurse")
    if not recurse and not key:
        raise _HTTPError(400, "Missing key name")
    cas = _parse_uint(request, "cas")
    if request.anonymous:
        raise _denied("key:write", key)
    if recurse:
        store.apply(lambda idx: store.kv_delete_tree(idx, key))
        return _json_reply(True)
    if cas is None:
        store.apply(lambda idx: store.kv_delete(idx, key))
        return _json_reply(True)
    return _json_reply(store.apply(lambda idx: store.kv_delete_cas(idx, key, cas)))


# --------------------------------------------------------------------------------------------
# /v1/txn


@dataclass
class _TxnOp:
    kind: Literal["KV", "Node", "Service", "Check"]
    verb: str
    body: dict[str, Any]

    @property
    def is_write(self) -> bool:
        """agent/txn_endpoint.go isWrite: decides between Txn.Apply and the read-only Txn.Read."""
        if self.kind == "KV":
            return self.verb in _KV_WRITE_VERBS
        return self.verb != "get"


_KV_WRITE_VERBS = frozenset({"set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock"})


_CATALOG_VERBS = frozenset({"set", "cas", "get", "delete", "delete-cas"})


def _convert_txn_ops(double: ConsulDouble, request: _Request) -> list[_TxnOp]:
    """agent/txn_endpoint.go convertOps: size limits, decoding, the Service field mapping."""
    prefix = "Failed to parse body: "
    if len(request.body) > MAX_TXN_BYTES:
        raise _HTTPError(
            413,
            f"Request body({len(request.body)} bytes) too large, max size: {MAX_TXN_BYTES} "
            "bytes. See https://www.consul.io/docs/agent/config/config-files#txn_max_req_len.",
        )
    raw = request.json("api.TxnOps", prefix)
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _HTTPError(
            400,
            f"{prefix}json: cannot unmarshal {_json_kind(raw)} into Go value of type api.TxnOps",
        )
    if len(raw) > MAX_TXN_OPS:
        raise _HTTPError(
            413, f"Transaction contains too many operations ({len(raw)} > {MAX_TXN_OPS})"
        )
    ops: list[_TxnOp] = []
    try:
        for item in raw:
            op = _convert_txn_op(_Fields(item, "api.TxnOp"), double.datacenter)
            if op is not None:
                ops.append(op)
    except _DecodeError as exc:
        raise _HTTPError(400, f"{prefix}{exc}") from None
    return ops


def _convert_txn_op(item: _Fields, datacenter: str) -> _TxnOp | None:
    kv = item.sub("KV", "api.KVTxnOp")
    if kv is not None:
        value_raw = kv.get("Value")
        value: bytes | None = None
        if value_raw is not None:
            if not isinstance(value_raw, str):
                raise _DecodeError(
                    f"json: cannot unmarshal {_json_kind(value_raw)} into Go struct field "
                    "KVTxnOp.KV.Value of type []uint8"
                )
            try:
                value = base64.b64decode(value_raw, validate=True)
            except ValueError:
                raise _DecodeError("illegal base64 data at input byte 0") from None
        if value is not None and len(value) > MAX_KV_VALUE:
            raise _HTTPError(
                413,
                f'Value for key "{kv.string("Key")}" is too large ({len(value)} > '
                f"{MAX_KV_VALUE} bytes)",
            )
        body = {
            "Key": kv.string("Key"),
            "Value": value,
            "Flags": kv.integer("Flags"),
            "Index": kv.integer("Index"),
            "Session": kv.string("Session"),
        }
        return _TxnOp("KV", kv.string("Verb"), body)
    node_op = item.sub("Node", "api.NodeTxnOp")
    if node_op is not None:
        node = node_op.sub("Node", "api.Node") or _Fields({}, "api.Node")
        record = _node_record(node, datacenter)
        record["Meta"] = node.str_map("Meta")
        return _TxnOp(
            "Node",
            node_op.string("Verb"),
            {"Node": record, "ModifyIndex": node.integer("ModifyIndex")},
        )
    service_op = item.sub("Service", "api.ServiceTxnOp")
    if service_op is not None:
        service = service_op.sub("Service", "api.AgentService") or _Fields({}, "api.AgentService")
        return _TxnOp(
            "Service",
            service_op.string("Verb"),
            {
                "Node": service_op.string("Node"),
                "Service": _service_record(service, txn_subset=True),
                "ModifyIndex": service.integer("ModifyIndex"),
            },
        )
    check_op = item.sub("Check", "api.CheckTxnOp")
    if check_op is not None:
        check = check_op.sub("Check", "api.HealthCheck") or _Fields({}, "api.HealthCheck")
        record = _check_record(check, check.string("Node"))
        record["CheckID"] = check.string("CheckID")  # checkPreApply fills it, in preCheck
        return _TxnOp(
            "Check",
            check_op.string("Verb"),
            {"Check": record, "ModifyIndex": check.integer("ModifyIndex")},
        )
    return None  # convertOps' switch has no default: the op is dropped


def _txn_precheck(double: ConsulDouble, request: _Request, ops: list[_TxnOp]) -> list[str | None]:
    """agent/consul/txn_endpoint.go preCheck: one error (or None) per op."""
    store = double._store
    errors: list[str | None] = []
    for op in ops:
        error: str | None = None
        if op.kind == "KV":
            if not op.body["Key"] and op.verb != "delete-tree":
                error = "Must provide key"
            elif request.anonymous and op.verb not in ("get", "get-tree", "get-or-empty"):
                error = _denied_text("key:write", op.body["Key"])
        elif op.verb not in _CATALOG_VERBS:
            error = f"unknown {op.kind.lower()} operation: {op.verb}"
        elif op.verb != "get":
            error = _txn_precheck_catalog(store, request, op)
        errors.append(error)
    return errors


def _txn_precheck_catalog(store: _Store, request: _Request, op: _TxnOp) -> str | None:
    if op.kind == "Node":
        node = op.body["Node"]
        if not node["Node"]:
            return "Must provide node"
        if node["ID"] and not UUID_RE.match(node["ID"]):
            return f"Bad node ID: uuid string is wrong length: {node['ID']!r}"
        return _denied_text("node:write", node["Node"]) if request.anonymous else None
    if op.kind == "Service":
        return _txn_precheck_service(store, request, op)
    check = op.body["Check"]
    check["CheckID"] = check["CheckID"] or check["Name"]
    return _denied_text("node:write", check["Node"]) if request.anonymous else None


def _txn_precheck_service(store: _Store, request: _Request, op: _TxnOp) -> str | None:
    service = op.body["Service"]
    try:
        _service_pre_apply(service, require_id=op.verb in ("set", "cas"))
    except _HTTPError as exc:
        return exc.message
    existing = store.service(op.body["Node"], service["ID"])
    if existing is not None and existing["Service"] != service["Service"]:
        return (
            "service name does not match existing service name for service ID "
            f'"{service["ID"]}" on node "{op.body["Node"]}"'
        )
    return _denied_text("service:write", service["Service"]) if request.anonymous else None


class _TxnRunner:
    """agent/consul/state/txn.go: dispatch every op, collecting results and errors."""

    def __init__(self, store: _Store, idx: int) -> None:
        self.store = store
        self.idx = idx

    def run(self, ops: list[_TxnOp]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, op in enumerate(ops):
            try:
                handler = getattr(self, f"_{op.kind.lower()}")
                results.extend(handler(op))
            except _RaftError as exc:
                errors.append({"OpIndex": index, "What": str(exc)})
        return results, errors

    # -- KV
    def _kv(self, op: _TxnOp) -> list[dict[str, Any]]:
        store, body, verb = self.store, op.body, op.verb
        key = body["Key"]
        existing = store.t.kv.get(key)
        entry: dict[str, Any] | None = None
        with_value = verb in ("get", "get-or-empty")
        if verb == "set":
            entry = store.kv_set(self.idx, key, body["Value"], body["Flags"])
        elif verb == "cas":
            entry = store.kv_cas(self.idx, key, body["Value"], body["Flags"], body["Index"])
            if entry is None:
                raise _RaftError(f'failed to set key "{key}", index is stale')
        elif verb == "delete":
            store.kv_delete(self.idx, key)
        elif verb == "delete-cas":
            if not store.kv_delete_cas(self.idx, key, body["Index"]):
                raise _RaftError(f'failed to delete key "{key}", index is stale')
        elif verb == "delete-tree":
            store.kv_delete_tree(self.idx, key)
        elif verb == "get":
            if existing is None:
                raise _RaftError(f'key "{key}" doesn\'t exist')
            entry = existing
        elif verb == "get-or-empty":
            entry = existing or {
                "LockIndex": 0, "Key": key, "Flags": body["Flags"], "Value": None,
                "Session": "", "CreateIndex": 0, "ModifyIndex": body["Index"],
            }  # fmt: skip
        elif verb == "get-tree":
            return [{"KV": _kv_view(e)} for e in store.kv_list(key)]
        else:
            entry = self._kv_checks(op, existing)
        return [] if entry is None else [{"KV": _kv_view(entry, with_value=with_value)}]

    def _kv_checks(self, op: _TxnOp, existing: dict[str, Any] | None) -> dict[str, Any] | None:
        body, verb = op.body, op.verb
        key = body["Key"]
        if verb == "check-index":
            if existing is None:
                raise _RaftError(f'failed to check index, key "{key}" doesn\'t exist')
            if existing["ModifyIndex"] != body["Index"]:
                raise _RaftError(
                    f'failed index check for key "{key}", current modify index '
                    f"{existing['ModifyIndex']} != {body['Index']}"
                )
            return existing
        if verb == "check-not-exists":
            if existing is not None:
                raise _RaftError(f'key "{key}" exists')
            return None
        if verb == "check-session":
            if existing is None:
                raise _RaftError(f'failed to check session, key "{key}" doesn\'t exist')
            if existing["Session"] != body["Session"]:
                raise _RaftError(
                    f'failed session check for key "{key}", current session '
                    f'"{existing["Session"]}" != "{body["Session"]}"'
                )
            return existing
        if verb in ("lock", "unlock"):
            if not body["Session"]:
                raise _RaftError("missing session")
            if verb == "unlock" and existing is None:
                raise _RaftError(
                    f'failed to unlock key "{key}", lock isn\'t held, or is held by another session'
                )
            raise _RaftError(f'invalid session "{body["Session"]}"')
        raise _RaftError(f'unknown KV verb "{verb}"')

    # -- Node
    def _node(self, op: _TxnOp) -> list[dict[str, Any]]:
        store, node = self.store, op.body["Node"]
        name, cas = node["Node"], op.body["ModifyIndex"]
        existing = store.node(name)
        if op.verb == "get":
            if existing is None:
                raise _RaftError(f'node "{name}" doesn\'t exist')
            return [{"Node": _node_view(existing)}]
        if op.verb == "set":
            return [{"Node": _node_view(store.ensure_node(self.idx, node))}]
        if op.verb == "cas":
            stale = (cas == 0 and existing is not None) or (cas != 0 and existing is None)
            if stale or (existing is not None and existing["ModifyIndex"] != cas):
                raise _RaftError(f'failed to set node "{name}", index is stale')
            return [{"Node": _node_view(store.ensure_node(self.idx, node))}]
        if op.verb == "delete":
            store.delete_node(self.idx, name)
            return []
        if existing is None or existing["ModifyIndex"] != cas:
            raise _RaftError(f'failed to delete node "{name}", index is stale')
        store.delete_node(self.idx, name)
        return []

    # -- Service
    def _service(self, op: _TxnOp) -> list[dict[str, Any]]:
        store, node, service = self.store, op.body["Node"], op.body["Service"]
        sid, cas = service["ID"], op.body["ModifyIndex"]
        existing = store.service(node, sid)
        if op.verb == "get":
            if existing is None:
                raise _RaftError(f'service "{sid}" on node "{node}" doesn\'t exist')
            return [{"Service": _node_service_view(existing)}]
        if op.verb in ("set", "cas"):
            if op.verb == "cas":
                stale = (cas == 0 and existing is not None) or (cas != 0 and existing is None)
                if stale or (existing is not None and existing["ModifyIndex"] != cas):
                    raise _RaftError(
                        f'failed to set service "{sid}" on node "{node}", index is stale'
                    )
            record = store.ensure_service(self.idx, node, service)
            return [{"Service": _node_service_view(record)}]
        if op.verb == "delete":
            store.delete_service(self.idx, node, sid)
            return []
        if existing is None or existing["ModifyIndex"] != cas:
            raise _RaftError(f'failed to delete service "{sid}" on node "{node}", index is stale')
        store.delete_service(self.idx, node, sid)
        return []

    # -- Check
    def _check(self, op: _TxnOp) -> list[dict[str, Any]]:
        store, check = self.store, op.body["Check"]
        node, cid, cas = check["Node"], check["CheckID"], op.body["ModifyIndex"]
        existing = store.check(node, cid)
        if op.verb == "get":
            if existing is None:
                raise _RaftError(f'check "{cid}" on node "{node}" doesn\'t exist')
            return [{"Check": _check_view(existing)}]
        if op.verb in ("set", "cas"):
            if op.verb == "cas":
                stale = (cas == 0 and existing is not None) or (cas != 0 and existing is None)
                if stale or (existing is not None and existing["ModifyIndex"] != cas):
                    raise _RaftError(
                        f'failed to set check "{cid}" on node "{node}", index is stale'
                    )
            return [{"Check": _check_view(store.ensure_check(self.idx, check))}]
        if op.verb == "delete":
            store.delete_check(self.idx, node, cid)
            return []
        if existing is None or existing["ModifyIndex"] != cas:
            raise _RaftError(f'failed to delete check "{cid}" on node "{node}", index is stale')
        store.delete_check(self.idx, node, cid)
        return []


def _txn_conflict(errors: list[dict[str, Any]]) -> _Reply:
    return _json_reply({"Results": None, "Errors": errors}, status=409)


@_route(r"/v1/txn", "PUT")
def _txn(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    ops = _convert_txn_ops(double, request)
    precheck = _txn_precheck(double, request, ops)
    errors = [{"OpIndex": i, "What": e} for i, e in enumerate(precheck) if e is not None]
    if errors:
        return _txn_conflict(errors)
    if not any(op.is_write for op in ops):  # Txn.Read: no raft entry
        snapshot = store.t.copy()
        results, errors = _TxnRunner(store, 0).run(ops)
        store.t = snapshot
        if request.anonymous:
            results = []  # FilterTxnResults: reads succeed, results the token may not see vanish
        reply = _txn_conflict(errors) if errors else _json_reply({"Results": results,
                                                                  "Errors": None})  # fmt: skip
        reply.headers["X-Consul-KnownLeader"] = "true"
        reply.headers["X-Consul-LastContact"] = "0"
        return reply

    def write(idx: int) -> list[dict[str, Any]]:
        results, errors = _TxnRunner(store, idx).run(ops)
        if errors:
            raise _TxnFailed(errors)
        return results

    try:
        results = store.apply(write)
    except _TxnFailed as failed:
        return _txn_conflict(failed.errors)
    if request.anonymous:
        results = []
    return _json_reply({"Results": results, "Errors": None})


class _TxnFailed(_RaftError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("transaction failed")
        self.errors = errors


# --------------------------------------------------------------------------------------------
# /v1/config


def _config_entry(request: _Request) -> dict[str, Any]:
    prefix = "Request decoding failed: "
    raw = request.json("map[string]interface{}", prefix)
    if not isinstance(raw, dict):
        raise _HTTPError(400, f"{prefix}Payload does not contain a kind/Kind key at the top level")
    fields = _Fields(raw, "ConfigEntry")
    kind, name = fields.get("Kind"), fields.get("Name")
    if not isinstance(kind, str) or not kind:
        raise _HTTPError(400, f"{prefix}Payload does not contain a kind/Kind key at the top level")
    if kind not in CONFIG_KINDS:
        raise _HTTPError(400, f"{prefix}invalid config entry kind: {kind}")
    entry = {k: copy.deepcopy(v) for k, v in raw.items() if k.lower() not in ("kind", "name")}
    entry = {"Kind": kind, "Name": name if isinstance(name, str) else "", **entry}
    entry.pop("CreateIndex", None)
    entry.pop("ModifyIndex", None)
    return entry


def _validate_config_entry(entry: dict[str, Any]) -> None:
    kind, name = entry["Kind"], entry["Name"]
    fixed = {"proxy-defaults": "global", "mesh": "mesh"}.get(kind)
    if fixed is not None and name != fixed:
        raise _HTTPError(500, f'invalid name ("{name}"), only "{fixed}" is supported')
    if fixed is None and not name:
        raise _HTTPError(500, "Name is required")


@_route(r"/v1/config", "PUT")
def _config_apply(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    entry = _config_entry(request)
    cas = _parse_uint(request, "cas")
    _validate_config_entry(entry)
    if request.anonymous:
        raise _denied("operator:write", "")
    key = (entry["Kind"], entry["Name"])

    def write(idx: int) -> bool:
        existing = store.t.config.get(key)
        if cas is not None:
            stale = (cas == 0 and existing is not None) or (cas != 0 and existing is None)
            if stale or (existing is not None and existing["ModifyIndex"] != cas):
                return False
        store.config_set(idx, entry)
        return True

    return _json_reply(store.apply(write))


@_route(r"/v1/config/(?P<kind>[^/]+)(?:/(?P<name>.+))?", "GET", query=True)
def _config_get(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    kind, name = match["kind"], match["name"]
    if kind not in CONFIG_KINDS:
        raise _HTTPError(500, f"invalid config entry kind: {kind}")
    index = store.table_index("config-entries")
    if name is None:
        entries = [] if request.anonymous else [
            copy.deepcopy(e) for (k, _), e in sorted(store.t.config.items()) if k == kind
        ]  # fmt: skip
        return _query(entries, index)
    if request.anonymous:
        raise _denied("service:read", name)
    entry = store.t.config.get((kind, name))
    if entry is None:
        raise _HTTPError(404, f'Config entry not found for "{kind}" / "{name}"')
    return _query(copy.deepcopy(entry), index)


@_route(r"/v1/config/(?P<kind>[^/]+)/(?P<name>.+)", "DELETE")
def _config_delete(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store = double._store
    kind, name = match["kind"], match["name"]
    if kind not in CONFIG_KINDS:
        raise _HTTPError(400, f"invalid config entry kind: {kind}")
    cas = _parse_uint(request, "cas")
    if request.anonymous:
        raise _denied("operator:write", "")
    if cas is None:
        store.apply(lambda idx: store.config_delete(idx, kind, name))
        return _json_reply({})

    def write(idx: int) -> bool:
        existing = store.t.config.get((kind, name))
        if existing is None or existing["ModifyIndex"] != cas:
            return False
        store.config_delete(idx, kind, name)
        return True

    return _json_reply(store.apply(write))


# --------------------------------------------------------------------------------------------
# /v1/acl


def _acl_guard(double: ConsulDouble, request: _Request, permission: str) -> None:
    if not double._acl_enabled():
        raise _HTTPError(401, "ACL support disabled")
    if request.anonymous:
        raise _denied(permission, "")


def _hash(payload: JSON) -> str:
    digest = hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=32)
    return base64.b64encode(digest.digest()).decode()


def _policy_stub(policy: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in policy.items() if k != "Rules"}


@_route(r"/v1/acl/policies", "GET", query=True)
def _acl_policy_list(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    _acl_guard(double, request, "acl:read")
    store = double._store
    policies = sorted(store.t.policies.values(), key=lambda p: p["Name"])
    return _query([_policy_stub(p) for p in policies], store.table_index("acl-policies"))


@_route(r"/v1/acl/policy", "PUT")
def _acl_policy_create(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    _acl_guard(double, request, "acl:write")
    return _acl_policy_write(double, request, policy_id="")


@_route(r"/v1/acl/policy/name/(?P<name>.*)", "GET", query=True)
def _acl_policy_by_name(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    _acl_guard(double, request, "acl:read")
    if not match["name"]:
        raise _HTTPError(400, "Missing policy Name")
    store = double._store
    policy = store.policy_by_name(match["name"])
    if policy is None:
        raise _HTTPError(404, "Requested policy does not exist: ACL not found")
    return _query(copy.deepcopy(policy), store.table_index("acl-policies"))


@_route(r"/v1/acl/policy/(?P<id>[^/]*)", "GET PUT DELETE", query=True)
def _acl_policy(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store, policy_id = double._store, match["id"]
    if request.method == "GET":
        _acl_guard(double, request, "acl:read")
        if not policy_id:
            raise _HTTPError(400, "Missing policy ID")
        policy = store.t.policies.get(policy_id)
        if policy is None:
            raise _HTTPError(404, "Requested policy does not exist: ACL not found")
        return _query(copy.deepcopy(policy), store.table_index("acl-policies"))
    _acl_guard(double, request, "acl:write")
    if request.method == "PUT":
        return _acl_policy_write(double, request, policy_id=policy_id)
    if not policy_id:
        raise _HTTPError(400, "Missing policy ID")
    store.apply(lambda idx: _delete_policy(store, idx, policy_id))
    return _json_reply(True)


def _delete_policy(store: _Store, idx: int, policy_id: str) -> None:
    if store.t.policies.pop(policy_id, None) is not None:
        store._touch(idx, "acl-policies")


def _acl_policy_write(double: ConsulDouble, request: _Request, *, policy_id: str) -> _Reply:
    store = double._store
    prefix = "Policy decoding failed: "
    body = _decode(request, "structs.ACLPolicy", prefix)
    try:
        given_id, name = body.string("ID"), body.string("Name")
        description, rules = body.string("Description"), body.string("Rules")
        datacenters = body.str_list("Datacenters")
    except _DecodeError as exc:
        raise _HTTPError(400, f"{prefix}{exc}") from None
    if not policy_id and given_id:
        raise _HTTPError(400, "Cannot specify the ID when creating a new policy")
    if policy_id and given_id and given_id != policy_id:
        raise _HTTPError(400, "Policy ID in URL and payload do not match")
    if not name:
        raise _HTTPError(500, "Invalid Policy: no Name is set")
    if not POLICY_NAME_RE.match(name):
        raise _HTTPError(
            500,
            "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed",
        )
    existing = store.t.policies.get(policy_id) if policy_id else None
    if policy_id and existing is None:
        raise _HTTPError(500, f"cannot find policy {policy_id}")
    same_name = store.policy_by_name(name)
    if same_name is not None and same_name["ID"] != policy_id:
        raise _HTTPError(500, f'Invalid Policy: A Policy with Name "{name}" already exists')
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

    return _json_reply(copy.deepcopy(store.apply(write)))


@_route(r"/v1/acl/tokens", "GET", query=True)
def _acl_token_list(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    _acl_guard(double, request, "acl:read")
    store = double._store
    policy_filter = request.param("policy")
    tokens = [
        double._token_view(t)
        for t in sorted(store.t.tokens.values(), key=lambda t: t["CreateIndex"])
    ]
    if policy_filter:
        tokens = [t for t in tokens if any(p["ID"] == policy_filter for p in t.get("Policies", []))]
    return _query(tokens, store.table_index("acl-tokens"))


@_route(r"/v1/acl/token", "PUT")
def _acl_token_create(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    _acl_guard(double, request, "acl:write")
    return _acl_token_write(double, request, accessor="")


@_route(r"/v1/acl/token/self", "GET", query=True)
def _acl_token_self(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    if not double._acl_enabled():
        raise _HTTPError(401, "ACL support disabled")
    store = double._store
    token = store.token_by_secret(request.token)
    if token is None:
        if request.token and double._initial_tokens and request.token in double._initial_tokens:
            view = {"AccessorID": "", "SecretID": request.token, "Description": "initial token",
                    "Policies": [{"ID": "00000000-0000-0000-0000-000000000001",
                                  "Name": "global-management"}], "Local": False}  # fmt: skip
            return _query(view, store.table_index("acl-tokens"))
        raise _HTTPError(403, "ACL not found")
    return _query(double._token_view(token), store.table_index("acl-tokens"))


@_route(r"/v1/acl/token/(?P<accessor>[^/]*)", "GET PUT DELETE", query=True)
def _acl_token(double: ConsulDouble, request: _Request, match: re.Match[str]) -> _Reply:
    store, accessor = double._store, match["accessor"]
    if request.method == "GET":
        _acl_guard(double, request, "acl:read")
        if not accessor:
            raise _HTTPError(400, "Missing token AccessorID")
        token = store.t.tokens.get(accessor)
        if token is None:
            raise _HTTPError(404, "Requested token does not exist: ACL not found")
        return _query(double._token_view(token), store.table_index("acl-tokens"))
    _acl_guard(double, request, "acl:write")
    if request.method == "PUT":
        return _acl_token_write(double, request, accessor=accessor)
    if not UUID_RE.match(accessor):
        raise _HTTPError(500, "Accessor ID is missing or an invalid UUID")
    token = store.t.tokens.get(accessor)
    if token is not None and token["SecretID"] == request.token:
        raise _HTTPError(500, "Deletion of the request's authorization token is not permitted")

    def write(idx: int) -> None:
        if store.t.tokens.pop(accessor, None) is not None:
            store._touch(idx, "acl-tokens")

    store.apply(write)
    return _json_reply(True)


def _policy_links(store: _Store, body: _Fields) -> list[dict[str, str]]:
    links: list[dict[str, str]] = []
    raw = body.get("Policies")
    if raw is None:
        return links
    if not isinstance(raw, list):
        raise _DecodeError(
            f"json: cannot unmarshal {_json_kind(raw)} into Go struct field ACLToken.Policies "
            "of type []structs.ACLTokenPolicyLink"
        )
    for item in raw:
        link = _Fields(item, "structs.ACLTokenPolicyLink")
        policy_id, name = link.string("ID"), link.string("Name")
        if policy_id:
            if policy_id not in store.t.policies:
                raise _HTTPError(500, f'No such ACL policy with ID "{policy_id}"')
        else:
            policy = store.policy_by_name(name)
            if policy is None:
                raise _HTTPError(500, f'No such ACL policy with name "{name}"')
            policy_id = policy["ID"]
        if all(existing["ID"] != policy_id for existing in links):
            links.append({"ID": policy_id})
    return links


def _acl_token_write(double: ConsulDouble, request: _Request, *, accessor: str) -> _Reply:
    store = double._store
    prefix = "Token decoding failed: "
    body = _decode(request, "structs.ACLToken", prefix)
    try:
        given_accessor, secret = body.string("AccessorID"), body.string("SecretID")
        description, local = body.string("Description"), body.boolean("Local")
        links = _policy_links(store, body)
    except _DecodeError as exc:
        raise _HTTPError(400, f"{prefix}{exc}") from None
    creating = not accessor
    if not creating:
        given_accessor = given_accessor or accessor
        if given_accessor != accessor:
            raise _HTTPError(400, "Token Accessor ID in URL and payload do not match")
    initial = double._initial_tokens or frozenset()
    in_use = {t["AccessorID"] for t in store.t.tokens.values()}
    in_use |= {t["SecretID"] for t in store.t.tokens.values()} | set(initial)
    existing = None
    if creating:
        for label, value in (("AccessorID", given_accessor), ("SecretID", secret)):
            if value and not UUID_RE.match(value):
                raise _HTTPError(500, f"Invalid Token: {label} - not a valid UUID")
            if value and value in in_use:
                raise _HTTPError(500, f"Invalid Token: {label} is already in use")
        given_accessor = given_accessor or str(uuid.uuid4())
        secret = secret or str(uuid.uuid4())
    else:
        if not UUID_RE.match(accessor):
            raise _HTTPError(500, "AccessorID is not a valid UUID")
        existing = store.t.tokens.get(accessor)
        if existing is None:
            raise _HTTPError(500, f'Cannot find token "{accessor}"')
        if secret and secret != existing["SecretID"]:
            raise _HTTPError(500, "Changing a token's SecretID is not permitted")
        if local != existing["Local"]:
            raise _HTTPError(500, f"Cannot toggle local mode of {accessor}")
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
        token["CreateTime"] = existing["CreateTime"] if existing else _now_rfc3339()
        token["Hash"] = _hash({k: token[k] for k in ("Description", "Local")} | {"P": links})
        token["CreateIndex"] = existing["CreateIndex"] if existing else idx
        token["ModifyIndex"] = idx
        store.t.tokens[given_accessor] = token
        store._touch(idx, "acl-tokens")
        return token

    token = store.apply(write)
    return _json_reply(double._token_view(token))


def _iter_routes() -> Iterator[_Route]:
    """The registered endpoints, in match order (for documentation and tests)."""
    return iter(_ROUTES)
