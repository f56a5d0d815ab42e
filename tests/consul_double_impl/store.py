"""Consul's state store: tables of immutable records, raft-like indexes, all-or-nothing writes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import RaftError
from .records import validate_service_meta, without_indexes


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


class Store:
    """Consul's catalog, KV, config-entry and ACL state, with raft-like indexes."""

    def __init__(self, datacenter: str) -> None:
        self.datacenter = datacenter
        self.index = 0
        self.t = _Tables()
        self.warnings: list[str] = []
        self.snapshots = True  # False while seeding in bulk (ConsulDouble.bulk_seeding)

    # -- raft-like application
    def apply(self, write: Callable[[int], Any]) -> Any:
        """Run ``write`` as one raft entry: all of it or nothing, index consumed either way."""
        idx = self.index + 1
        snapshot = self.t.copy() if self.snapshots else None
        try:
            return write(idx)
        except BaseException:
            if snapshot is not None:
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
        return [self.t.services[k] for k in sorted(k for k in self.t.services if k[0] == key)]

    def node_checks(self, name: str) -> list[dict[str, Any]]:
        key = name.lower()
        return [self.t.checks[k] for k in sorted(k for k in self.t.checks if k[0] == key)]

    def ensure_node(self, idx: int, node: dict[str, Any]) -> dict[str, Any]:
        existing = self.node(node["Node"])
        if existing is not None and without_indexes(existing) == node:
            return existing
        record = {
            **node,
            "CreateIndex": existing["CreateIndex"] if existing else idx,
            "ModifyIndex": idx,
        }
        self.t.nodes[node["Node"].lower()] = record
        self._touch(idx, "nodes")
        # A new node has no services yet (delete_node removes a node's services with it); not
        # scanning every service for it keeps seeding n nodes O(n), not O(n^2)
        for service in self.node_services(node["Node"]) if existing is not None else []:
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
        validate_service_meta(service, node)
        if self.node(node) is None:
            raise RaftError("Missing node registration")
        key = (node.lower(), service["ID"])
        existing = self.t.services.get(key)
        if existing is not None and without_indexes(existing) == service:
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
            raise RaftError("Missing node registration")
        check = dict(check)
        if check["ServiceID"]:
            service = self.service(node, check["ServiceID"])
            if service is None:
                raise RaftError("Missing service registration")
            check["ServiceName"] = service["Service"]
            check["ServiceTags"] = list(service["Tags"])
        if check["CheckID"] == "serfHealth":
            self.warnings.append(
                f"check 'serfHealth' written on node {node!r}: that check belongs to Consul "
                "agents, a catalog-only registration must never carry it"
            )
        key = (node.lower(), check["CheckID"])
        existing = self.t.checks.get(key)
        if existing is not None and without_indexes(existing) == check:
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
            except RaftError as exc:
                raise RaftError(f"failed inserting service: {exc}") from None
        for check in checks:
            if check["Node"].lower() != node["Node"].lower():
                raise RaftError(
                    f'check node "{check["Node"]}" does not match node "{node["Node"]}"'
                )
            try:
                self.ensure_check(idx, check)
            except RaftError as exc:
                raise RaftError(f'failed inserting check on node "{node["Node"]}": {exc}') from None

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
        if existing is not None and without_indexes(existing) == entry:
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

    def token_view(self, token: dict[str, Any]) -> dict[str, Any]:
        """A token as Consul renders it: policy links carry the policy's current name."""
        view = copy.deepcopy(token)
        links = []
        for link in token.get("Policies") or []:
            policy = self.t.policies.get(link["ID"])
            if policy is not None:  # links to deleted policies vanish on read, as in Consul
                links.append({"ID": policy["ID"], "Name": policy["Name"]})
        if links:
            view["Policies"] = links
        else:
            view.pop("Policies", None)
        return view
