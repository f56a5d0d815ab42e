"""The exposure as a graph, from review.json: sources → listeners and ports → workloads → secrets.

- Sources: the internet, CIDRs outside the VPC (on-prem), the VPC, security groups, prefix
  lists, and the clients of an ECS Anywhere host (for ports published on the hosts).
- Listeners and ports: one node per security group (or task definition) and port, named after
  what is behind it (a load balancer, the servers) and what listens (Consul's HTTPS API …).
- Workloads: what the security group is attached to (the load balancer forwards to the servers'
  Auto Scaling group), the task definitions, and whatever runs as a role that reads a secret.
- Secrets: each secret a workload reads (the readers of review.json, drawn from the workloads
  that run as the reading role; a role nothing in the templates runs as is its own node).
- Egress to a destination outside the VPC is drawn back to that destination.

Node IDs come from stack + logical ID (or the CIDR), never from display names, so the same
thing has the same ID in a baseline and in this assembly, and edges can be compared.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from tools.review.compare import EXTERNAL, Facts, Names, get, rid

SOURCES, PORTS, WORKLOADS, SECRETS = "sources", "ports", "workloads", "secrets"
REACH, SERVES, READS, EGRESS = "reach", "serves", "reads", "egress"


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    group: str  # SOURCES, PORTS, WORKLOADS, SECRETS


@dataclass(frozen=True, order=True)
class Edge:
    source: str
    target: str
    kind: str  # REACH, SERVES, READS, EGRESS
    label: str = ""


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[Edge, None] = field(default_factory=dict)  # ordered set

    def node(self, key: object, label: str, group: str) -> str:
        found = node_id(group, key)
        self.nodes.setdefault(found, Node(found, label, group))
        return found

    def edge(self, source: str, target: str, kind: str, label: str = "") -> None:
        self.edges.setdefault(Edge(source, target, kind, label), None)


def node_id(group: str, key: object) -> str:
    """`<group>_<readable part>_<hash>`: a valid Mermaid ID, unique per key, stable per key."""
    text = repr(key)
    last = key[-1] if isinstance(key, tuple) and key else key
    readable = re.sub(r"[^A-Za-z0-9]+", "_", str(last)).strip("_")[:28]
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{group[:3]}_{readable}_{digest}"


def _peer(graph: Graph, kind: str, value: str, resource: Facts | None, names: Names) -> str:
    """The node of a source (or egress destination)."""
    key: object = ("cidr", value)
    if kind in ("internet", "anywhere") or value in ("0.0.0.0/0", "::/0"):
        key, label = "internet", "the internet"
    elif kind == "host-clients":
        key, label = "host-clients", "clients of the hosts"
    elif kind == "group" and resource:
        key, label = rid(resource), f"sg {names(resource)}"
    elif kind == "routed":
        key, label = "routed", "every network routed to the VPC"
    elif kind == "vpc":
        label = f"the VPC {value}"
    elif kind == "prefix-list":
        key, label = ("prefix-list", value), f"prefix list {value}"
    elif kind == "unresolved" or value == "?":
        key, label = "unresolved", "unresolved peer"
    else:
        outside = kind in ("outside-vpc", "outside_vpc")
        label = f"{value} {'outside the VPC' if outside else 'inside the VPC'}"
    return graph.node(key, label, SOURCES)


def _workload(graph: Graph, res: Facts, names: Names) -> str:
    return graph.node(rid(res), names(res), WORKLOADS)


def _reachability(graph: Graph, facts: Facts, names: Names) -> None:
    for path in get(facts, "network", "reachability"):
        source = _peer(
            graph, path["source_kind"], path.get("source", ""), path.get("source_resource"), names
        )
        behind = path.get("behind") or []
        if path["source_kind"] == "host-clients":
            task = behind[0] if behind else {}
            ports = str(path["ports"]).replace(" -> ", " → ")
            mesh = " (no mTLS)" if path.get("bypasses_mesh") else ""
            mesh = mesh or (" (mTLS)" if str(path.get("listens", "")).startswith("mesh") else "")
            label = f"{names(task)} {path.get('container', '')} {ports}{mesh}"
            port = graph.node((rid(task), path.get("container"), path["ports"]), label, PORTS)
            graph.edge(source, port, REACH)
            if task:
                graph.edge(port, _workload(graph, task, names), SERVES)
            continue
        target = path.get("target")
        what = names.join(behind) or f"sg {names(target)}"
        listens = str(path.get("listens", ""))
        name = listens.split(" ", 1)[1] if listens.startswith(f"{path['ports']} ") else ""
        plaintext = " (plaintext)" if path.get("plaintext") else ""
        label = f"{what} {path['protocol']} {path['ports']} {name}".strip() + plaintext
        port = graph.node((rid(target), path["protocol"], path["ports"]), label, PORTS)
        graph.edge(source, port, REACH)
        for workload in path.get("forwards_to") or behind:
            graph.edge(port, _workload(graph, workload, names), SERVES)


def _secrets(graph: Graph, facts: Facts, names: Names) -> None:
    run_by = {
        rid(role["role"]): role.get("run_by") or []
        for role in get(facts, "policies", "roles")
        if "stack" in (role.get("role") or {})
    }
    for secret in get(facts, "secrets", "secrets"):
        node = graph.node(rid(secret["secret"]), f"secret {names(secret['secret'])}", SECRETS)
        for reader in secret.get("readers") or []:
            principal = reader.get("principal")
            if principal is None:
                text = str(reader.get("principal_text") or "?")
                graph.edge(graph.node(("principal", text), text, WORKLOADS), node, READS, "reads")
                continue
            for holder in run_by.get(rid(principal)) or [principal]:
                graph.edge(_workload(graph, holder, names), node, READS, "reads")


def _egress(graph: Graph, facts: Facts, names: Names) -> None:
    attached = {
        rid(item["group"]): item.get("attached_to") or []
        for item in get(facts, "network", "security_groups")
    }
    for rule in get(facts, "network", "egress"):
        if rule["reach"] not in EXTERNAL or not rule.get("group") or "stack" not in rule["group"]:
            continue
        kind = "outside_vpc" if rule["reach"] == "outside_vpc" else rule["reach"]
        target = _peer(graph, kind, rule["destination"], rule.get("destination_resource"), names)
        senders = attached.get(rid(rule["group"])) or []
        sources = [_workload(graph, w, names) for w in senders] or [
            graph.node(rid(rule["group"]), f"sg {names(rule['group'])}", SOURCES)
        ]
        ports = (
            "all traffic" if rule["protocol"] == "all" else f"{rule['protocol']} {rule['ports']}"
        )
        for source in sources:
            graph.edge(source, target, EGRESS, f"egress {ports}")


def exposure_graph(facts: Facts, names: Names) -> Graph:
    graph = Graph()
    _reachability(graph, facts, names)
    _secrets(graph, facts, names)
    _egress(graph, facts, names)
    return graph
