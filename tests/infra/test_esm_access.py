"""consul-esm on the servers can do its job: read its files and write check results.

consul-esm runs as its own user with its own ACL token. These tests check the two things it
needs at run time against what the fleet really sets up: the permissions of the files it opens
(from the boot script's own install/ownership calls) and the ACL rules Consul evaluates its
check updates with (hashicorp/consul `agent/consul/txn_endpoint.go` `vetCheckTxnOp`: a Check
op of a service-level check needs `service:write` on the check's ServiceName, a node-level
check `node:write` on the node; consul-esm sends every status change as a txn `cas` of the
check it read from /v1/health/node, ServiceName included, hashicorp/consul-esm `check.go`).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh_stack import consul_server_config as csc

BOOTSTRAP = Path(csc.__file__).parent / "assets" / "consul_server" / "consul_bootstrap.sh"

NODE_PREFIX = "ecs-task-"
_RULE = re.compile(r'^(\w+?)(_prefix)? "([^"]*)" \{ policy = "(\w+)" \}$')
_RANK = {"deny": 0, "read": 1, "write": 2}


def _policy_for(rules: str, resource: str, name: str) -> str:
    """Consul's rule resolution: an exact rule wins, else the longest matching prefix."""
    exact: str | None = None
    best: tuple[int, str] | None = None
    for line in rules.splitlines():
        match = _RULE.match(line.strip())
        if not match or match.group(1) != resource:
            continue
        is_prefix, value, policy = bool(match.group(2)), match.group(3), match.group(4)
        if not is_prefix and value == name:
            exact = policy
        elif is_prefix and name.startswith(value) and (best is None or len(value) > best[0]):
            best = (len(value), policy)
    if exact is not None:
        return exact
    return best[1] if best else "deny"


def _may(rules: str, resource: str, name: str, access: str) -> bool:
    return _RANK[_policy_for(rules, resource, name)] >= _RANK[access]


@pytest.mark.parametrize("service", ["backend", "backend-sidecar-proxy", "payments-api"])
def test_esm_may_write_the_status_of_a_registered_service_check(service: str) -> None:
    # GIVEN consul-esm's token, and a check the registrar wrote on a task node for `service`
    rules = csc.esm_policy(NODE_PREFIX)
    # WHEN consul-esm writes the check's new status (txn Check cas with ServiceID set)
    allowed = _may(rules, "service", service, "write")
    # THEN Consul's txn vetting lets it through: service:write on the check's ServiceName
    assert allowed, f"a check of {service} would stay at its initial status forever"


def test_esm_may_write_a_node_level_check_only_on_the_registrars_nodes() -> None:
    rules = csc.esm_policy(NODE_PREFIX)
    assert _may(rules, "node", f"{NODE_PREFIX}0123abcd", "write")
    assert not _may(rules, "node", "consul-server-i-0abc", "write")


def test_esm_still_cannot_touch_acls_keys_or_operators() -> None:
    rules = csc.esm_policy(NODE_PREFIX)
    assert "acl" not in rules.replace(NODE_PREFIX, "")
    assert "operator" not in rules
    assert _may(rules, "key", "consul-esm/agents", "write")
    assert not _may(rules, "key", "ecs-registrar/tasks/x", "read")


# --- files: what the boot script installs, and who can open it -------------------------------

# The boot script's calls, run for real with every side effect on the machine replaced by a
# recorder: `install` and `write_private` log what they would create (path, mode, owner), the
# user lookups succeed, and `consul tls cert create` writes dummy files.
_HARNESS = r"""
source "$BOOTSTRAP"
install() { printf 'install\t%s\n' "$*" >>"$RECORD"; }
write_private() { cat >/dev/null; printf 'private\t%s %s\n' "$1" "$2" >>"$RECORD"; }
id() { return 0; }
useradd() { return 0; }
instance_id() { echo i-0123456789abcdef0; }
private_ip() { echo 10.40.1.10; }
BIN_DIR="$FAKE_BIN"
DATACENTER=dc1
NLB_DNS_NAME=internal-consul.elb.example
create_users
sign_server_cert '{"cert": "CA", "key": "KEY"}'
write_consul_config GOSSIP MANAGEMENT AGENT
write_esm_config "00000000-0000-0000-0000-000000000000"
"""


@dataclass(frozen=True)
class Node:
    mode: int
    owner: str
    group: str


def _record(tmp_path: Path) -> dict[str, Node]:
    """path -> mode/owner/group of everything the boot steps create."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    consul = fake_bin / "consul"
    consul.write_text(
        '#!/bin/sh\n[ "$1" = tls ] && touch dc1-server-consul-0.pem dc1-server-consul-0-key.pem\n'
        "exit 0\n"
    )
    consul.chmod(0o755)
    record = tmp_path / "record.tsv"
    env = {
        **os.environ,
        "BOOTSTRAP": str(BOOTSTRAP),
        "RECORD": str(record),
        "FAKE_BIN": str(fake_bin),
    }
    result = subprocess.run(
        ["bash", "-c", _HARNESS],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    nodes: dict[str, Node] = {}
    for line in record.read_text().splitlines():
        kind, args = line.split("\t", 1)
        if kind == "private":
            path, owner_group = args.split()
            owner, group = owner_group.split(":")
            nodes[path] = Node(0o640, owner, group)
            continue
        words, directory = args.split(), False
        mode, owner, group, paths = 0o755, "root", "root", []
        while words:
            word = words.pop(0)
            if word == "-d":
                directory = True
            elif word in ("-m", "-o", "-g"):
                value = words.pop(0)
                if word == "-m":
                    mode = int(value, 8)
                elif word == "-o":
                    owner = value
                else:
                    group = value
            else:
                paths.append(word)
        for path in paths if directory else paths[-1:]:
            nodes[path] = Node(mode, owner, group)
    return nodes


def _can(nodes: dict[str, Node], user: str, groups: set[str], path: str, bit: int) -> bool:
    """POSIX access: owner bits, else group bits, else other bits (root-owned defaults)."""
    node = nodes.get(path, Node(0o755, "root", "root"))
    if node.owner == user:
        return bool(node.mode & (bit << 6))
    if node.group in groups:
        return bool(node.mode & (bit << 3))
    return bool(node.mode & bit)


def _readable(nodes: dict[str, Node], user: str, groups: set[str], path: str) -> bool:
    parents = [str(p) for p in reversed(Path(path).parents)]
    return all(_can(nodes, user, groups, d, 1) for d in parents) and _can(
        nodes, user, groups, path, 4
    )


def _esm_files() -> dict[str, str]:
    config = csc.render_esm_config(datacenter="dc1")
    (ca_file,) = re.findall(r'^ca_file = "([^"]+)"$', config, re.M)
    return {"ca_file": ca_file, "config": f"{csc.ESM_DIR}/esm.hcl"}


def test_consul_esm_can_open_every_file_it_reads(tmp_path: Path) -> None:
    # GIVEN the files the boot script creates, with their modes and owners
    nodes = _record(tmp_path)
    # WHEN consul-esm (its own user, in no other group) opens its config, token and CA file
    files = {**_esm_files(), "token": f"{csc.ESM_DIR}/token.hcl"}
    # THEN each exists and its whole path is readable to it
    for what, path in files.items():
        assert path in nodes, f"{what} {path} is never installed"
        assert _readable(nodes, "consul-esm", {"consul-esm"}, path), f"{what} {path}"


def test_consul_esm_cannot_read_the_servers_secrets(tmp_path: Path) -> None:
    nodes = _record(tmp_path)
    for path in (csc.KEY_FILE, csc.ACL_TOKENS_FILE, csc.GOSSIP_FILE):
        assert path in nodes, path
        assert not _readable(nodes, "consul-esm", {"consul-esm"}, path), path
    # while the consul user still reads its own key and token fragments
    for path in (csc.KEY_FILE, csc.ACL_TOKENS_FILE):
        assert _readable(nodes, "consul", {"consul"}, path), path
