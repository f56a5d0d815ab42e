"""Consul administration steps of the server boot (standard library only).

    consul_admin.py acl-bootstrap --management-token-file F [--timeout S] --token NAME:POLICY:SECRET
    consul_admin.py health-gate NODE_NAME EXPECTED_VOTERS [TIMEOUT_SECONDS]

Runs on the servers' own Python (Amazon Linux 2023 ships 3.9), so nothing newer than 3.9 is
used at run time. Always talks to the local agent on 127.0.0.1:8501 and verifies it against the
fleet's CA: the server certificate carries 127.0.0.1.

acl-bootstrap: creates, or repairs, the ACL policies and tokens the servers themselves need. Run
by consul_bootstrap.sh on every server at every boot, once the cluster has a leader. A leader is
not enough: the new leader creates the `initial_management` token only when it establishes its
leadership (`initializeACLs`, hashicorp/consul agent/consul/leader.go, run by
`establishLeadership` after the Raft barrier). Until then `GET /v1/acl/token/self` with that
token answers 404 "Supplied token does not exist" (it looks the secret up instead of resolving
it, see `wait_for_acls`), and every endpoint that resolves the token answers 403 "ACL not
found". So the step first waits, with backoff and a deadline (`--timeout`), until
`GET /v1/acl/token/self` with the management token answers 200. For each
`--token`, the policy NAME gets the rules in POLICY_FILE, and a token with the SecretID in
SECRET_FILE (a UUID published once in Secrets Manager, see consul_lib.sh) is linked to it.
Consul lets the caller choose a token's SecretID, so the token is the same on every server and
survives any replacement: the step only ever converges to that state, whoever runs it, in any
order, concurrently (a lost creation race is re-read, not retried blindly).

health-gate: exit 0 only once this server is a healthy voter. The user data runs it after
consul_bootstrap.sh and sends the CloudFormation signal SUCCESS only if it exits 0. The Auto
Scaling group's rolling update (max batch 1, min in service = count - 1, wait on signals)
therefore replaces the next server only when autopilot reports the whole cluster healthy with
this server as a voter: quorum is never at risk because of the update.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

LOCAL_HTTPS = "https://127.0.0.1:8501"
CA_FILE = "/etc/consul.d/tls/consul-agent-ca.pem"
ACL_TOKENS_FILE = "/etc/consul.d/50-acl-tokens.json"
ACL_TIMEOUT = 300.0  # seconds acl-bootstrap waits for the leader's ACL setup (user data passes it)
ACL_BACKOFF = (1.0, 15.0)  # first and longest pause between two readiness checks

# Replaced by tests with a fake clock, so no test sleeps on wall time.
_sleep: Callable[[float], None] = time.sleep
_clock: Callable[[], float] = time.monotonic


class ConsulAPI(Protocol):
    """What the scripts need from Consul: one request, the status and the decoded body."""

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]: ...


class HttpsConsul:
    """`ConsulAPI` over HTTPS with a default token (the management token on the servers)."""

    def __init__(
        self, token: str, ca_file: str | None = CA_FILE, base_url: str = LOCAL_HTTPS
    ) -> None:
        self._token = token
        self._base = base_url
        self._tls = ssl.create_default_context(cafile=ca_file)

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - the URL is always LOCAL_HTTPS + path
            self._base + path, data=data, method=method
        )
        req.add_header("X-Consul-Token", token if token is not None else self._token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._tls, timeout=10) as resp:  # noqa: S310
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.read())


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def management_token(path: str = ACL_TOKENS_FILE) -> str:
    """The initial management token from the agent's own config fragment (root/consul only)."""
    with open(path, encoding="utf-8") as handle:
        token: str = json.load(handle)["acl"]["tokens"]["initial_management"]
    return token


_NOT_FOUND = (403, 404)  # Consul answers "ACL not found" with 403 on older releases


class AclError(RuntimeError):
    """Consul refused a request the bootstrap needs; the message names it."""


# What `GET /v1/acl/token/self` answers while the management token cannot be used yet:
# - 404 "Supplied token does not exist": a leader is elected but has not created the token
#   (initializeACLs). ACLTokenSelf (hashicorp/consul agent/acl_endpoint.go, 7fa1034 lines
#   344-378) calls the RPC ACL.TokenRead with TokenIDType ACLTokenSecret; TokenRead
#   (agent/consul/acl_endpoint.go) reads state.ACLTokenGetBySecret without resolving the
#   caller, finds nothing and returns no error, so the endpoint answers 404 (line 374). A
#   follower forwards the read to the leader and gets the same 404. A wrong secret looks
#   exactly the same, which is why the deadline's message names both causes.
# - 403 "ACL not found": what an endpoint that resolves the token answers in that window (and
#   what releases before the 404 answered here); kept so an older server is waited for too.
# - 500 "No cluster leader" (or no answer at all) before the election, 503 while the agent is
#   still starting.
# Any other answer (401 "ACL support disabled", 400, ...) will not change by waiting.
_NOT_READY = (403, 404, 500, 503)


def wait_for_acls(api: ConsulAPI, timeout: float) -> None:
    """Return once the management token is accepted (`/v1/acl/token/self` = 200).

    Polls with exponential backoff (ACL_BACKOFF) until `timeout` seconds have passed, then
    raises AclError with the last answer and both possible causes. Connection errors count as
    "not ready yet".
    """
    deadline = _clock() + timeout
    pause, longest = ACL_BACKOFF
    while True:
        try:
            status, body = api.request("GET", "/v1/acl/token/self")
        except OSError as err:  # urllib's URLError is an OSError: the agent is not listening
            status, body = 0, str(err)
        if status == 200:
            print("consul-fleet: ACLs ready: the management token is accepted", flush=True)
            return
        if status not in (0, *_NOT_READY):
            raise AclError(f"checking the management token: HTTP {status} {body}")
        left = deadline - _clock()
        if left <= 0:
            raise AclError(
                f"the management token was not found within {timeout:.0f}s (last answer: "
                f"HTTP {status} {body}). Either the leader has not created it yet (it does so "
                "from acl.tokens.initial_management when it establishes leadership; see the "
                "servers' consul logs for the election and ACL errors), or the management "
                "token secret does not hold the initial_management token this cluster was "
                "first bootstrapped with (a wrong secret answers the same 404)"
            )
        print(f"consul-fleet: waiting for ACLs (HTTP {status} {body})", flush=True)
        _sleep(min(pause, left))
        pause = min(pause * 2, longest)


def ensure_policy(api: ConsulAPI, name: str, rules: str) -> str:
    """The ID of policy `name`, created or updated so that its rules are `rules`."""
    for _ in range(3):
        status, body = api.request("GET", "/v1/acl/policy/name/" + urllib.parse.quote(name))
        if status == 200:
            if body.get("Rules", "").strip() != rules.strip():
                put = {"Name": name, "Description": body.get("Description", ""), "Rules": rules}
                status, body = api.request("PUT", f"/v1/acl/policy/{body['ID']}", put)
                if status != 200:
                    raise AclError(f"updating policy {name}: HTTP {status} {body}")
            return str(body["ID"])
        if status not in _NOT_FOUND:
            raise AclError(f"reading policy {name}: HTTP {status} {body}")
        new = {"Name": name, "Description": f"{name} (Consul fleet bootstrap)", "Rules": rules}
        status, body = api.request("PUT", "/v1/acl/policy", new)
        if status == 200:
            return str(body["ID"])
        # Another server created it between our read and our write: read it again.
        time.sleep(1)
    raise AclError(f"policy {name} could not be created: HTTP {status} {body}")


def ensure_token(api: ConsulAPI, policy: str, secret_id: str) -> str:
    """The AccessorID of the token whose SecretID is `secret_id`, linked to `policy`."""
    wanted: dict[str, Any] = {
        "SecretID": secret_id,
        "Description": f"{policy} (Consul fleet bootstrap)",
        "Policies": [{"Name": policy}],
    }
    for _ in range(3):
        status, body = api.request("GET", "/v1/acl/token/self", token=secret_id)
        if status == 200:
            names = {link.get("Name") for link in body.get("Policies") or []}
            if policy not in names:
                accessor = body["AccessorID"]
                status, body = api.request("PUT", f"/v1/acl/token/{accessor}", wanted)
                if status != 200:
                    raise AclError(f"linking token to {policy}: HTTP {status} {body}")
            return str(body["AccessorID"])
        if status not in _NOT_FOUND:
            raise AclError(f"reading the {policy} token: HTTP {status} {body}")
        status, body = api.request("PUT", "/v1/acl/token", wanted)
        if status == 200:
            return str(body["AccessorID"])
        time.sleep(1)
    raise AclError(f"the {policy} token could not be created: HTTP {status} {body}")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def gate(health: Any, node: str, expected_voters: int) -> tuple[bool, str]:
    """Whether `/v1/operator/autopilot/health` says the cluster may lose one more server."""
    if not isinstance(health, dict):
        return False, f"unexpected autopilot answer: {health!r}"
    servers = health.get("Servers") or []
    me: dict[str, Any] = next((s for s in servers if s.get("Name") == node), {})
    healthy_voters = sum(1 for s in servers if s.get("Voter") and s.get("Healthy"))
    wanted = (expected_voters - 1) // 2
    checks = (
        (bool(me), f"{node} is not in the Raft configuration yet"),
        (bool(me.get("Voter")), f"{node} is not a voter yet (autopilot stabilization)"),
        (bool(me.get("Healthy")), f"{node} is not healthy yet"),
        (
            healthy_voters >= expected_voters,
            f"{healthy_voters} of {expected_voters} voters are healthy",
        ),
        (bool(health.get("Healthy")), "autopilot reports the cluster unhealthy"),
        (
            int(health.get("FailureTolerance") or 0) >= wanted,
            f"failure tolerance {health.get('FailureTolerance')} < {wanted}",
        ),
    )
    for passed, why in checks:
        if not passed:
            return False, why
    return True, f"{node} is a healthy voter; {healthy_voters} healthy voters"


def servers_summary(health: Any) -> str:
    """One line per server of an autopilot answer: what makes it (un)healthy."""
    if not isinstance(health, dict):
        return ""
    return "; ".join(
        f"{s.get('Name')}: voter={s.get('Voter')} healthy={s.get('Healthy')} "
        f"serf={s.get('SerfStatus')} leader={s.get('Leader')} "
        f"last_contact={s.get('LastContact')} last_index={s.get('LastIndex')}"
        for s in health.get("Servers") or []
    )


def wait(api: ConsulAPI, node: str, expected: int, timeout: float, interval: float = 10) -> bool:
    """Poll the gate until it opens or `timeout` seconds pass.

    Consul answers `/v1/operator/autopilot/health` with 429 whenever the cluster is unhealthy,
    with the same JSON body as a 200 (hashicorp/consul agent/operator_endpoint.go,
    `OperatorServerHealth`): that body says which server is unhealthy and why, so it is logged.
    """
    deadline = _clock() + timeout
    while True:
        status, body = api.request("GET", "/v1/operator/autopilot/health")
        if status in (200, 429):
            ok, why = gate(body, node, expected)
            if not ok and status == 429:
                why = f"{why} (HTTP 429: {servers_summary(body) or body})"
        else:
            ok, why = False, f"HTTP {status} {body}"
        print(f"consul-fleet: health gate: {why}", flush=True)
        if ok:
            return True
        if _clock() >= deadline:
            return False
        _sleep(interval)


def acl_bootstrap(
    api: ConsulAPI, specs: list[tuple[str, str, str]], timeout: float = ACL_TIMEOUT
) -> None:
    """Once the management token is accepted, apply each (policy name, rules, token SecretID)."""
    wait_for_acls(api, timeout)
    for name, rules, secret_id in specs:
        ensure_policy(api, name, rules)
        accessor = ensure_token(api, name, secret_id)
        # The accessor is not a secret: it names the token in audit logs.
        print(f"consul-fleet: policy and token {name} in place (accessor {accessor})", flush=True)


def main(argv: list[str], api: ConsulAPI | None = None) -> int:
    parser = argparse.ArgumentParser(prog="consul_admin.py")
    sub = parser.add_subparsers(dest="command", required=True)
    acl = sub.add_parser("acl-bootstrap")
    acl.add_argument("--ca-file", default=CA_FILE)
    acl.add_argument("--management-token-file", required=True)
    acl.add_argument("--timeout", type=float, default=ACL_TIMEOUT)
    acl.add_argument("--token", action="append", default=[], metavar="NAME:POLICY:SECRET")
    health = sub.add_parser("health-gate")
    health.add_argument("node")
    health.add_argument("expected_voters", type=int)
    health.add_argument("timeout", type=float, nargs="?", default=1200.0)
    args = parser.parse_args(argv)
    if args.command == "acl-bootstrap":
        specs = []
        for spec in args.token:
            parts = spec.split(":")
            if len(parts) != 3:
                parser.error(f"--token must be NAME:POLICY_FILE:SECRET_FILE, got {spec!r}")
            specs.append((parts[0], _read(parts[1]), _read(parts[2])))
        client = api or HttpsConsul(_read(args.management_token_file), ca_file=args.ca_file)
        acl_bootstrap(client, specs, args.timeout)
        return 0
    client = api or HttpsConsul(management_token())
    return 0 if wait(client, args.node, args.expected_voters, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
