"""Requests, replies and routes: the HTTP plumbing shared by the endpoint modules."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .bexpr import FilterError, Predicate, Schema, compile_filter
from .decode import JSON, Fields, parse_go_duration
from .errors import DecodeError, HTTPError
from .store import Store

DEFAULT_WAIT = 300.0  # blocking query default wait, seconds
MAX_WAIT = 600.0  # blocking query maximum wait, seconds


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    index: int | None = None  # set for queries: becomes X-Consul-Index (and drives blocking)


def json_reply(payload: JSON, status: int = 200) -> Reply:
    return Reply(status=status, body=dumps(payload))


def dumps(payload: JSON) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def text_reply(status: int, text: str) -> Reply:
    return Reply(status=status, body=text.encode(), content_type="text/plain; charset=utf-8")


@dataclass
class Request:
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

    def json(self, prefix: str) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise HTTPError(400, f"{prefix}{exc}") from None


Handler = Callable[["Backend", Request, re.Match[str]], Reply]


class Backend(Protocol):
    """What endpoint handlers may see of the double: its state and its settings."""

    @property
    def store(self) -> Store: ...

    @property
    def datacenter(self) -> str: ...

    @property
    def has_leader(self) -> bool: ...

    @property
    def accepted_tokens(self) -> frozenset[str] | None:
        """The initial tokens that exist right now (none while a new leader has not set up its
        ACLs yet); None when ACLs are off."""

    @property
    def unreadable_keys(self) -> tuple[str, ...]:
        """Key prefixes no token may read (ConsulDouble.hide_keys)."""


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    methods: tuple[str, ...]
    handler: Handler
    query: bool = False  # a GET that supports blocking and sets the X-Consul-* query headers
    status_endpoint: bool = False  # needs neither a leader nor a token
    # False for the one endpoint that looks the caller's secret up instead of resolving it
    # (/v1/acl/token/self): an unknown secret is its 404, not the 403 "ACL not found".
    resolves_token: bool = True


class Router:
    """The routes of one endpoint module, in the order they are declared (first match wins)."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(
        self,
        pattern: str,
        methods: str,
        *,
        query: bool = False,
        status_endpoint: bool = False,
        resolves_token: bool = True,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    re.compile(pattern),
                    tuple(methods.split()),
                    handler,
                    query,
                    status_endpoint,
                    resolves_token,
                )
            )
            return handler

        return register


def blocking_params(request: Request) -> tuple[int, float]:
    wait = DEFAULT_WAIT
    raw_wait = request.param("wait")
    if raw_wait:
        try:
            wait = min(parse_go_duration(raw_wait) / 1e9, MAX_WAIT)
        except ValueError:
            raise HTTPError(400, "Invalid wait time") from None
    raw_index = request.param("index")
    min_index = 0
    if raw_index:
        if not raw_index.isdigit():
            raise HTTPError(400, "Invalid index")
        min_index = int(raw_index)
    return min_index, wait


def query_reply(payload: JSON, index: int, *, filtered: bool = False) -> Reply:
    reply = json_reply(payload)
    reply.index = index
    if filtered:
        reply.headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return reply


def query_filter(request: Request, schema: Schema) -> Predicate | None:
    expression = request.param("filter")
    if not expression:
        return None
    try:
        return compile_filter(expression, schema)
    except FilterError as exc:
        raise HTTPError(500, f"Failed to create boolean expression evaluator: {exc}") from None


def node_meta_filter(request: Request) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for raw in request.query.get("node-meta", []):
        key, _, value = raw.partition(":")
        pairs[key] = value
    return pairs


def meta_matches(meta: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    meta = meta or {}
    return all(meta.get(k) == v for k, v in wanted.items())


def decode_body(request: Request, struct: str, prefix: str) -> Fields:
    try:
        return Fields(request.json(prefix), struct)
    except DecodeError as exc:
        raise HTTPError(400, f"{prefix}{exc}") from None


def parse_uint(request: Request, name: str) -> int | None:
    raw = request.param(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise HTTPError(500, f'strconv.ParseUint: parsing "{raw}": invalid syntax')
    return int(raw)


def conflicting(request: Request, *flags: str) -> None:
    if sum(1 for f in flags if request.flag(f)) > 1:
        encoded = "&".join(f"{k}={v[0] if v else ''}" for k, v in sorted(request.query.items()))
        raise HTTPError(400, f"Conflicting flags: {encoded}")
