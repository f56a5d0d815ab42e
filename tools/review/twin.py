"""review.json: the same facts as REVIEW.md, as data a diff (or any tool) can compare.

Stability rules, so two reviews of two assemblies diff cleanly:
- every resource is `{"stack", "logical_id", "path"}` (`Res.json`): match on stack + logical ID,
  and on construct path to recognise a logical-ID change as a move;
- every list is sorted by its natural key, never by template order; no timestamps, no
  absolute paths (the assembly folder is given as passed on the command line);
- Markdown never appears in a value: labels are rendered from these facts.
`SCHEMA` changes whenever a key is renamed or removed; adding a key keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tools.review.collect import Review
from tools.review.model import Res
from tools.review.posture import weaknesses, wildcard_groups

SCHEMA = "consul-mesh-review/1"
Facts = dict[str, Any]


def _res(res: Res | None) -> Facts | None:
    return res.json() if res is not None else None


def _declared_by(review: Review, stack_name: str, logical_id: str) -> Facts | None:
    stack = review.assembly.stack_named(stack_name)
    return stack.res(logical_id).json() if stack and logical_id in stack.resources else None


def _resources(review: Review) -> list[Facts]:
    """Every resource with its type: what a diff needs to tell a move from a remove + add."""
    return _sorted(
        {**stack.res(logical_id).json(), "type": stack.type_of(logical_id)}
        for stack in review.assembly.stacks
        for logical_id in stack.resources
    )


def _sorted(items: Iterable[Facts]) -> list[Facts]:
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


def _network(review: Review) -> Facts:
    return {
        "reachability": _sorted(
            {
                "target": _res(path.target),
                "network_mode": path.target_label.split("-mode")[0] if path.target is None else "",
                "container": path.container,
                "protocol": path.protocol,
                "ports": path.ports,
                "source_kind": path.source_kind,
                "source": path.source,
                "source_resource": _res(path.source_res),
                "reach": path.reach.name.lower(),
                "behind": [r.json() for r in path.behind],
                "forwards_to": [r.json() for r in path.forwards_to],
                "listens": path.listens,
                "bypasses_mesh": path.bypasses_mesh,
                "plaintext": path.plaintext,
            }
            for path in review.reachability
        ),
        "ingress": _sorted(
            {
                "group": _res(rule.group_res) or {"literal": rule.group},
                "protocol": rule.protocol,
                "ports": rule.ports,
                "source": rule.source,
                "source_kind": rule.source_kind,
                "source_resource": _res(rule.source_res),
                "reach": rule.reach.name.lower(),
                "description": rule.description,
                "declared_by": rule.declared_by,
                "declared_by_resource": _declared_by(review, rule.stack, rule.declared_by),
            }
            for rule in review.exposure.rules
        ),
        "listeners": _sorted(
            {
                "listener": _res(item.listener_res),
                "load_balancer": _res(item.load_balancer_res),
                "type": item.load_balancer_type,
                "scheme": item.scheme,
                "port": item.port,
                "protocol": item.protocol,
                "reach": item.reach.name.lower(),
                "target_groups": [r.json() for r in item.default_targets],
            }
            for item in review.exposure.listeners
        ),
        "egress": _sorted(
            {
                "group": _res(rule.group) or {"literal": rule.group_label},
                "protocol": rule.protocol,
                "ports": rule.ports,
                "destination": rule.destination,
                "destination_resource": _res(rule.destination_res),
                "reach": rule.reach.name.lower(),
                "description": rule.description,
                "reason": rule.reason,
                "implicit": rule.implicit,
                "declared_by": _res(rule.declared_by),
            }
            for rule in review.egress.rules
        ),
        "vpc_endpoints": review.egress.endpoints,
        "security_groups": _sorted(
            {"group": group.json(), "attached_to": [r.json() for r in attached]}
            for group, attached in review.behind_groups.items()
        ),
        "paths": _sorted(
            {
                "resource": item.res.json(),
                "kind": item.kind,
                "what": item.what,
                "inbound": item.inbound,
            }
            for item in review.network_paths
        ),
        "entry_points": _sorted(
            {"resource": item.res.json(), "what": item.what} for item in review.entry_points
        ),
        "published_ports": _sorted(
            {
                "task_definition": network.task_definition.json(),
                "network_mode": network.network_mode,
                "network_mode_given": network.mode_given,
                "mesh_apps": list(network.mesh_apps),
                "ports": [
                    {
                        "container": port.container,
                        "container_port": port.container_port,
                        "host_port": port.host_port,
                        "protocol": port.protocol,
                        "role": port.role,
                        "bypasses_mesh": port.bypasses_mesh,
                        "bind": port.bind,
                        "told": port.told,
                    }
                    for port in sorted(
                        network.ports, key=lambda p: (p.container, p.container_port or 0)
                    )
                ],
            }
            for network in review.task_networks
        ),
    }


def _access(items: Iterable[Any]) -> list[Facts]:
    return _sorted(
        {
            "principal": _res(access.principal),
            "principal_text": access.principal_text,
            "policy": access.policy.json(),
            "actions": list(access.actions),
            "how": access.how,
            "condition": access.condition,
        }
        for access in items
    )


def _secrets(review: Review) -> Facts:
    consul = review.consul
    return {
        "secrets": _sorted(
            {
                "secret": secret.res.json(),
                "description": secret.description,
                "kms_key": _res(secret.key_res) or "aws/secretsmanager",
                "rotation": secret.rotation,
                "readers": _access(secret.readers),
                "writers": _access(secret.writers),
                "injections": _sorted(
                    {
                        "where": item.where.json(),
                        "kind": item.kind,
                        "detail": item.detail,
                        "via": list(item.via),
                    }
                    for item in secret.injections
                ),
                "consul_token": _res(token.res)
                if (token := consul.token_for(secret.res))
                else None,
            }
            for secret in review.secrets.secrets
        ),
        "unresolved_access": _sorted(
            {
                "principal": _res(item.principal),
                "principal_text": item.principal_text,
                "policy": item.policy.json(),
                "actions": list(item.actions),
                "value": item.value,
                "why": list(item.why),
            }
            for item in review.secrets.unresolved
        ),
        "dynamic_references": _sorted(
            {"where": item.where.json(), "path": item.path}
            for item in review.secrets.dynamic_references
        ),
    }


def _consul(review: Review) -> Facts:
    consul = review.consul
    return {
        "acl_policies": _sorted(
            {
                "policy": policy.res.json(),
                "name": policy.name,
                "description": policy.description,
                "rules": [rule.text() for rule in policy.rules],
                "hcl": policy.raw,
            }
            for policy in consul.policies
        ),
        "acl_tokens": _sorted(
            {
                "token": token.res.json(),
                "description": token.description,
                "policies": sorted(token.policies),
                "service_identities": sorted(token.service_identities),
                "secret": _res(token.secret),
                "grants": [rule.text() for rule in token.rules],
                "unresolved_policies": list(token.unresolved),
            }
            for token in consul.tokens
        ),
        "intentions": _sorted(
            {
                "source": item.source,
                "destination": item.destination,
                "action": item.action,
                "entry": item.entry.json(),
            }
            for item in consul.intentions
        ),
        "config_entries": _sorted(
            {"entry": e.res.json(), "kind": e.kind, "name": e.name, "body": e.body}
            for e in consul.entries
        ),
    }


def _policies(review: Review) -> Facts:
    return {
        "kms_keys": _sorted(
            {
                "key": key.res.json(),
                "rotation": key.rotation,
                "aliases": list(key.aliases),
                "key_policy": [statement.json() for statement in key.statements],
                "role_grants": _access(key.iam_grants),
                "used_by": [r.json() for r in key.used_by],
            }
            for key in review.keys
        ),
        "resource_policies": _sorted(
            {
                "policy": policy.policy.json(),
                "applies_to": [r.json() for r in policy.applies_to],
                "applies_to_unresolved": list(policy.unresolved_targets),
                "statements": [statement.json() for statement in policy.statements],
            }
            for policy in review.resource_policies
        ),
        "roles": _sorted(
            {
                "role": _res(role.res) or {"literal": role.name},
                "assumed_by": [text.replace("`", "") for text in role.assumed_by],
                "trust": _sorted(statement.json() for statement in role.trust),
                "managed_policies": sorted(policy.arn for policy in role.managed),
                "managed_not_evaluated": sorted(policy.arn for policy in role.not_evaluated),
                "managed_evaluated_from": sorted(
                    f"{policy.evaluated} ({policy.partial or 'complete'})"
                    for policy in role.managed
                    if policy.evaluated
                ),
                "run_by": [r.json() for r in review.runs_as.get(role.res, ())] if role.res else [],
                "statements": _sorted(
                    {
                        "policy": statement.policy_res.json(),
                        "inline_name": statement.policy_name,
                        "effect": statement.effect,
                        "actions": statement.actions,
                        "not_action": statement.not_action,
                        "resources": statement.resources,
                        "not_resource": statement.not_resource,
                        "condition": statement.condition,
                    }
                    for statement in role.statements
                ),
                "wildcards": _sorted(
                    {
                        "finding": wildcard.finding,
                        "reported_at": wildcard.path,
                        "acknowledged": wildcard.acknowledged,
                        "acknowledgements": [
                            {"rule": c.rule, "at": c.acknowledged_at, "reason": c.reason}
                            for c in wildcard.covers
                        ],
                    }
                    for wildcard in role.wildcards
                ),
            }
            for role in review.roles
        ),
    }


def _posture(review: Review) -> Facts:
    return {
        "wildcard_groups": _sorted(
            {
                "kind": group.kind,
                "reason": group.reason,
                "covered_by": list(group.covered_by),
                "acknowledged": group.acknowledged,
                "items": _sorted(
                    {"principal": _res(principal), "wildcard": wildcard}
                    for principal, wildcard in group.items
                ),
            }
            for group in wildcard_groups(review)
        ),
        "weaker_than_default": _sorted(
            {
                "kind": item.kind,
                "subject": _res(item.subject),
                "what": item.what,
                "why": item.why,
            }
            for item in weaknesses(review)
        ),
        "encryption": _sorted(
            {
                "store": _res(store.res),
                "kind": store.kind,
                "at_rest": store.at_rest,
                "key": store.key.replace("`", ""),
                "in_transit": store.in_transit,
                "at_rest_ok": store.at_rest_ok,
                "in_transit_ok": store.in_transit_ok,
            }
            for store in review.stores
        ),
    }


def _checks(review: Review) -> Facts:
    nag = review.nag
    lint = review.lint
    return {
        "validation_report_found": review.report_found,
        "nag": {
            "packs": _sorted(
                {"name": p.name, "conclusion": p.conclusion, "open": p.open, "error": p.error}
                for p in nag.plugins
            ),
            "open": _sorted(
                {"plugin": f.plugin, "rule": f.rule, "path": f.path, "severity": f.severity}
                for f in nag.open
            ),
            "acknowledged": _sorted(
                {"rule": f.rule, "path": f.path, "at": f.acknowledged_at, "reason": f.reason}
                for f in nag.acknowledged
            ),
            "acknowledgements": _sorted(
                {"id": a.qualified_id, "at": a.path, "reason": a.reason}
                for a in review.assembly.acknowledgements
            ),
            "stale_acknowledgements": _sorted(
                {"id": a.qualified_id, "at": a.path, "reason": a.reason} for a in nag.stale
            ),
            "acknowledgements_not_checked": _sorted(
                {"id": a.qualified_id, "at": a.path, "reason": a.reason} for a in nag.not_checked
            ),
        },
        "cfn_lint": {
            "skipped": lint.skipped,
            "errors": lint.errors,
            "warnings": lint.warnings,
            "grouped": [
                {"rule": g.rule, "level": g.level, "count": g.count, "meaning": g.meaning}
                for g in lint.groups()
            ],
            "matches": _sorted(
                {
                    "level": m.level,
                    "rule": m.rule,
                    "template": m.file,
                    "location": m.location,
                    "message": m.message,
                }
                for m in lint.ungrouped()
            ),
        },
        "resource_counts": {
            stack: dict(sorted(counts.items()))
            for stack, counts in sorted(review.resource_counts().items())
        },
    }


def facts(review: Review) -> Facts:
    """Every fact of the review, keyed and sorted for diffing."""
    return {
        "schema": SCHEMA,
        "assembly": str(review.assembly.outdir),
        "stacks": sorted(
            (
                {"name": s.name, "stack_name": s.stack_name, "template": s.file.name}
                for s in review.assembly.stacks
            ),
            key=lambda item: item["name"],
        ),
        "vpc_cidrs_given": sorted(review.vpc_cidrs),
        "resources": _resources(review),
        "network": _network(review),
        "secrets": _secrets(review),
        "consul": _consul(review),
        "policies": _policies(review),
        "posture": _posture(review),
        "checks": _checks(review),
    }


def render_json(review: Review) -> str:
    return json.dumps(facts(review), indent=1, sort_keys=True) + "\n"
