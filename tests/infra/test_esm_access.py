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

import re

import pytest

from mesh_stack import consul_server_config as csc

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
