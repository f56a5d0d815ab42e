"""Access changes: IAM roles and statements, secrets, key and resource policies, Consul ACLs.

IAM: a statement is identified by its role, effect, actions, resources and condition (not by the
policy resource that carries it: moving a statement between policies grants nothing new). An
added and a removed statement of the same role that share all but one of actions, resources
and condition are one *changed* statement. A new wildcard (a cdk-nag IAM5 finding the role did
not have) is named on the statement that brings it, with the acknowledgement that covers it.

Broadening: a new wildcard no acknowledgement covers; a new reader or writer of a secret (or a
grant the review cannot resolve to one, or a secret's value put into a resource); a principal
other than an AWS service that may newly assume a role; a newly attached managed policy (its
statements are not in the templates); a new principal allowed to decrypt with a key; a key or
resource policy statement the review flags (anyone, or a service without a condition); a new
Consul ACL rule, a token's new policy or service identity, a new `allow` intention.
"""

from __future__ import annotations

import json
from collections.abc import Hashable

from tools.review.compare import (
    ADDED,
    CHANGED,
    REMOVED,
    Change,
    Facts,
    Names,
    canon,
    get,
    match,
    plus_minus,
    rid,
)

_DECRYPT = ("kms:decrypt", "kms:*", "*")


def _principal(access: Facts, names: Names) -> str:
    return names(access.get("principal"), str(access.get("principal_text") or "?"))


def _principal_id(access: Facts) -> Hashable:
    return rid(access.get("principal")) or str(access.get("principal_text", ""))


# --- IAM -------------------------------------------------------------------------------------


def _role_id(role: Facts) -> Hashable:
    return rid(role.get("role")) if "stack" in (role.get("role") or {}) else canon(role["role"])


def _statement_text(statement: Facts) -> str:
    actions = ", ".join(statement.get("actions") or [])
    resources = ", ".join(statement.get("resources") or [])
    text = (
        f"{statement['effect']} {'NOT ' if statement.get('not_action') else ''}{actions} on "
        f"{'NOT ' if statement.get('not_resource') else ''}{resources}"
    )
    condition = statement.get("condition")
    return f"{text} if {condition}" if condition else text


def _statement_id(statement: Facts) -> Hashable:
    return canon(
        [
            statement["effect"],
            sorted(statement.get("actions") or []),
            statement.get("not_action", False),
            sorted(statement.get("resources") or []),
            statement.get("not_resource", False),
            statement.get("condition", ""),
        ]
    )


def _explains(finding: str, statement: Facts) -> bool:
    kind, _, value = finding.partition("::")
    if kind == "Action":
        return value in (statement.get("actions") or [])
    return value in (statement.get("resources") or [])


def _wildcard_text(wildcard: Facts) -> str:
    finding = wildcard["finding"]
    if not wildcard.get("acknowledged"):
        return f"wildcard `{finding}` NOT acknowledged"
    covers = wildcard.get("acknowledgements") or [{}]
    cover = covers[0]
    return f"wildcard `{finding}` acknowledged ({cover.get('rule', '?')} at {cover.get('at', '?')})"


def _pair(
    removed: list[Facts], added: list[Facts]
) -> tuple[list[tuple[Facts, Facts]], list[Facts], list[Facts]]:
    """Pairs (old, new) of statements that share two of actions, resources and condition."""
    parts = ("actions", "resources", "condition")
    pairs: list[tuple[Facts, Facts]] = []
    left = list(removed)
    rest: list[Facts] = []
    for now in added:
        same = next(
            (
                was
                for was in left
                if was["effect"] == now["effect"]
                and sum(canon(was.get(p)) == canon(now.get(p)) for p in parts) == 2
            ),
            None,
        )
        if same is None:
            rest.append(now)
        else:
            left.remove(same)
            pairs.append((same, now))
    return pairs, left, rest


def _changed_statement(was: Facts, now: Facts) -> str:
    if canon(was.get("actions")) != canon(now.get("actions")):
        delta = f"actions {plus_minus(was.get('actions') or [], now.get('actions') or [])}"
    elif canon(was.get("resources")) != canon(now.get("resources")):
        delta = f"resources {plus_minus(was.get('resources') or [], now.get('resources') or [])}"
    else:
        delta = f"condition {was.get('condition') or 'none'} → {now.get('condition') or 'none'}"
    return f"{_statement_text(now)} ({delta})"


def _trust_why(added: set[str]) -> str:
    others = sorted(text for text in added if not text.startswith("Service "))
    return f"{', '.join(others)} may assume it" if others else ""


def _role_changes(was: Facts | None, now: Facts | None, names: Names) -> list[Change]:
    role = (now or was or {}).get("role") or {}
    name = names(role, str(role.get("literal", "?")))
    where = (role,) if "stack" in role else ()
    changes: list[Change] = []
    if was is None or now is None:
        side = now or was or {}
        trust = ", ".join(side.get("assumed_by") or []) or "nobody in the templates"
        managed = side.get("managed_policies") or []
        text = f"role {name}, assumed by {trust}" + (
            f"; managed policies {', '.join(managed)}" if managed else ""
        )
        why = ""
        if now is not None:
            reasons = [_trust_why(set(side.get("assumed_by") or []))]
            reasons += ["managed policies' statements are not in the templates"] if managed else []
            why = "; ".join(r for r in reasons if r)
        changes.append(Change("iam", ADDED if now else REMOVED, text, where, why))
    else:
        trust_old, trust_new = was.get("assumed_by") or [], now.get("assumed_by") or []
        if sorted(trust_old) != sorted(trust_new):
            changes.append(
                Change(
                    "iam",
                    CHANGED,
                    f"role {name} assumed by: {plus_minus(trust_old, trust_new)}",
                    where,
                    _trust_why(set(trust_new) - set(trust_old)),
                )
            )
        managed_old, managed_new = (
            was.get("managed_policies") or [],
            now.get("managed_policies") or [],
        )
        if sorted(managed_old) != sorted(managed_new):
            gained = set(managed_new) - set(managed_old)
            changes.append(
                Change(
                    "iam",
                    CHANGED,
                    f"role {name} managed policies: {plus_minus(managed_old, managed_new)}",
                    where,
                    "a newly attached managed policy: its statements are not in the templates"
                    if gained
                    else "",
                )
            )
    changes += _statement_changes(name, where, was, now)
    return changes


def _statement_changes(
    name: str, where: tuple[Facts, ...], was: Facts | None, now: Facts | None
) -> list[Change]:
    matched = match(
        (was or {}).get("statements") or [], (now or {}).get("statements") or [], _statement_id
    )
    pairs, removed, added = _pair(matched.removed, matched.added)
    old_findings = {w["finding"] for w in (was or {}).get("wildcards") or []}
    new_wildcards = [
        w for w in (now or {}).get("wildcards") or [] if w["finding"] not in old_findings
    ]
    shown: set[str] = set()
    changes: list[Change] = []

    def wildcards_of(statement: Facts) -> tuple[str, str]:
        found = [w for w in new_wildcards if _explains(w["finding"], statement)]
        shown.update(w["finding"] for w in found)
        text = "; ".join(_wildcard_text(w) for w in found)
        open_ = [w["finding"] for w in found if not w.get("acknowledged")]
        why = f"new wildcard {', '.join(open_)} that no acknowledgement covers" if open_ else ""
        return (f" — {text}" if text else ""), why

    for statement in added:
        extra, why = wildcards_of(statement)
        changes.append(
            Change("iam", ADDED, f"{name}: {_statement_text(statement)}{extra}", where, why)
        )
    for was_stmt, now_stmt in pairs:
        extra, why = wildcards_of(now_stmt)
        changes.append(
            Change(
                "iam",
                CHANGED,
                f"{name}: {_changed_statement(was_stmt, now_stmt)}{extra}",
                where,
                why,
            )
        )
    changes += [
        Change("iam", REMOVED, f"{name}: {_statement_text(statement)}", where)
        for statement in removed
    ]
    for wildcard in new_wildcards:  # new findings no statement change explains
        if wildcard["finding"] not in shown:
            why = "" if wildcard.get("acknowledged") else "a wildcard no acknowledgement covers"
            changes.append(Change("iam", ADDED, f"{name}: {_wildcard_text(wildcard)}", where, why))
    old_acked = {w["finding"]: w.get("acknowledged") for w in (was or {}).get("wildcards") or []}
    for wildcard in (now or {}).get("wildcards") or []:
        before = old_acked.get(wildcard["finding"])
        if before is not None and before != wildcard.get("acknowledged"):
            lost = before and not wildcard.get("acknowledged")
            changes.append(
                Change(
                    "iam",
                    CHANGED,
                    f"{name}: {_wildcard_text(wildcard)} (was "
                    f"{'acknowledged' if before else 'not acknowledged'})",
                    where,
                    "a wildcard lost its acknowledgement" if lost else "",
                )
            )
    return changes


def _iam(old: Facts, new: Facts, names: Names) -> list[Change]:
    before = {_role_id(r): r for r in get(old, "policies", "roles")}
    after = {_role_id(r): r for r in get(new, "policies", "roles")}
    changes: list[Change] = []
    for key in sorted(before.keys() | after.keys(), key=str):
        changes += _role_changes(before.get(key), after.get(key), names)
    return changes


# --- secrets ---------------------------------------------------------------------------------


def _secret_list(facts: Facts, part: str) -> list[Facts]:
    return [
        {**item, "secret": secret["secret"]}
        for secret in get(facts, "secrets", "secrets")
        for item in secret.get(part) or []
    ]


def _access(
    old: Facts, new: Facts, names: Names, *, part: str, verb: str, why: str
) -> list[Change]:
    matched = match(
        _secret_list(old, part),
        _secret_list(new, part),
        lambda a: (rid(a["secret"]), _principal_id(a)),
        lambda a: [sorted(a.get("actions") or []), a.get("condition", ""), a.get("how", "")],
    )

    def text(access: Facts) -> str:
        actions = "/".join(access.get("actions") or [])
        condition = f" if {access['condition']}" if access.get("condition") else ""
        return (
            f"{_principal(access, names)} {verb} {names(access['secret'])} "
            f"({actions}, {access.get('how', '')}){condition}"
        )

    def where(access: Facts) -> tuple[Facts, ...]:
        return tuple(r for r in (access["secret"], access.get("principal")) if r)

    changes = [Change("secrets", ADDED, text(a), where(a), why) for a in matched.added]
    changes += [Change("secrets", REMOVED, text(a), where(a)) for a in matched.removed]
    changes += [
        Change(
            "secrets",
            CHANGED,
            f"{text(now)} (was {'/'.join(was.get('actions') or [])}, "
            f"{was.get('how', '')}{' if ' + was['condition'] if was.get('condition') else ''})",
            where(now),
        )
        for was, now in matched.changed
    ]
    return changes


def _secrets(old: Facts, new: Facts, names: Names) -> list[Change]:
    matched = match(
        get(old, "secrets", "secrets"),
        get(new, "secrets", "secrets"),
        lambda s: rid(s["secret"]),
        lambda s: [s.get("kms_key"), s.get("rotation")],
    )

    def text(secret: Facts) -> str:
        key = secret.get("kms_key")
        key_text = names(key) if isinstance(key, dict) else str(key)
        return f"secret {names(secret['secret'])}: key {key_text}, {secret.get('rotation', '')}"

    changes = [Change("secrets", ADDED, text(s), (s["secret"],)) for s in matched.added]
    changes += [Change("secrets", REMOVED, text(s), (s["secret"],)) for s in matched.removed]
    changes += [
        Change(
            "secrets",
            CHANGED,
            f"{text(now)} (was: {text(was).split(': ', 1)[1]})",
            (now["secret"],),
        )
        for was, now in matched.changed
    ]
    changes += _access(
        old, new, names, part="readers", verb="reads", why="a new reader of a secret"
    )
    changes += _access(
        old, new, names, part="writers", verb="writes", why="a new writer of a secret"
    )
    injections = match(
        _secret_list(old, "injections"),
        _secret_list(new, "injections"),
        lambda i: (rid(i["secret"]), rid(i["where"]), i["kind"], i["detail"]),
    )
    for action, items in ((ADDED, injections.added), (REMOVED, injections.removed)):
        changes += [
            Change(
                "secrets",
                action,
                f"{names(i['secret'])} injected into {names(i['where'])}: "
                f"{i['kind']} {i['detail']}",
                (i["where"],),
            )
            for i in items
        ]
    unresolved = match(
        get(old, "secrets", "unresolved_access"),
        get(new, "secrets", "unresolved_access"),
        lambda u: (_principal_id(u), u["value"], tuple(u.get("actions") or [])),
    )
    for action, items in ((ADDED, unresolved.added), (REMOVED, unresolved.removed)):
        changes += [
            Change(
                "secrets",
                action,
                f"{_principal(u, names)} may {'/'.join(u.get('actions') or [])} `{u['value']}`, "
                f"which the review cannot resolve: {'; '.join(u.get('why') or [])}",
                tuple(r for r in (u.get("principal"), u.get("policy")) if r),
                "a secret grant the review cannot resolve" if action == ADDED else "",
            )
            for u in items
        ]
    dynamic = match(
        get(old, "secrets", "dynamic_references"),
        get(new, "secrets", "dynamic_references"),
        lambda d: (rid(d["where"]), d["path"]),
    )
    for action, items in ((ADDED, dynamic.added), (REMOVED, dynamic.removed)):
        changes += [
            Change(
                "secrets",
                action,
                "dynamic reference `{{resolve:secretsmanager:…}}` in "
                f"{names(d['where'])} at {d['path']}",
                (d["where"],),
                "a secret's value is written into the resource" if action == ADDED else "",
            )
            for d in items
        ]
    return changes


# --- key and resource policies ---------------------------------------------------------------


def _doc_statement_text(statement: Facts, names: Names) -> str:
    who = ", ".join(
        names(p["resource"]) if p.get("resource") else f"{p.get('kind')} {p.get('value')}"
        for p in statement.get("principals") or []
    )
    actions = ", ".join(statement.get("actions") or [])
    condition = f" if {statement['condition']}" if statement.get("condition") else ""
    return f"{statement['effect']} {who or 'no principal'}: {actions}{condition}"


def _decrypts(actions: list[str]) -> bool:
    return any(action.lower() in _DECRYPT for action in actions)


def _statements(
    owner: str, where: tuple[Facts, ...], old: list[Facts], new: list[Facts], names: Names
) -> list[Change]:
    matched = match(old, new, lambda s: canon({k: v for k, v in s.items() if k != "sid"}))
    changes: list[Change] = []
    for statement in matched.added:
        why = statement.get("flag") or ""
        if (
            not why
            and statement.get("effect") == "Allow"
            and _decrypts(statement.get("actions") or [])
        ):
            why = "a new principal may decrypt with the key" if owner.startswith("key") else ""
        changes.append(
            Change(
                "policies", ADDED, f"{owner}: {_doc_statement_text(statement, names)}", where, why
            )
        )
    changes += [
        Change("policies", REMOVED, f"{owner}: {_doc_statement_text(s, names)}", where)
        for s in matched.removed
    ]
    return changes


def _policies(old: Facts, new: Facts, names: Names) -> list[Change]:
    changes: list[Change] = []
    keys_old = {rid(k["key"]): k for k in get(old, "policies", "kms_keys")}
    keys_new = {rid(k["key"]): k for k in get(new, "policies", "kms_keys")}
    for key_id in sorted(keys_old.keys() | keys_new.keys(), key=str):
        was, now = keys_old.get(key_id), keys_new.get(key_id)
        key = (now or was or {})["key"]
        owner = f"key {names(key)}"
        if was is None or now is None:
            changes.append(
                Change(
                    "policies",
                    ADDED if now else REMOVED,
                    f"{owner}, rotation {(now or was or {}).get('rotation')}",
                    (key,),
                )
            )
        elif was.get("rotation") != now.get("rotation"):
            changes.append(
                Change(
                    "policies",
                    CHANGED,
                    f"{owner}: rotation {was.get('rotation')} → {now.get('rotation')}",
                    (key,),
                )
            )
        changes += _statements(
            owner,
            (key,),
            (was or {}).get("key_policy") or [],
            (now or {}).get("key_policy") or [],
            names,
        )
        grants = match(
            (was or {}).get("role_grants") or [],
            (now or {}).get("role_grants") or [],
            lambda g: (_principal_id(g), tuple(g.get("actions") or []), g.get("condition", "")),
        )
        for action, items in ((ADDED, grants.added), (REMOVED, grants.removed)):
            for grant in items:
                condition = f" if {grant['condition']}" if grant.get("condition") else ""
                why = ""
                if action == ADDED and _decrypts(grant.get("actions") or []):
                    why = "a new principal may decrypt with the key"
                changes.append(
                    Change(
                        "policies",
                        action,
                        f"{owner}: {_principal(grant, names)} may "
                        f"{', '.join(grant.get('actions') or [])} (its own policy){condition}",
                        tuple(r for r in (key, grant.get("principal")) if r),
                        why,
                    )
                )
    docs_old = {rid(p["policy"]): p for p in get(old, "policies", "resource_policies")}
    docs_new = {rid(p["policy"]): p for p in get(new, "policies", "resource_policies")}
    for policy_id in sorted(docs_old.keys() | docs_new.keys(), key=str):
        was, now = docs_old.get(policy_id), docs_new.get(policy_id)
        side = now or was or {}
        owner = f"policy of {names.join(side.get('applies_to') or []) or names(side['policy'])}"
        changes += _statements(
            owner,
            (side["policy"],),
            (was or {}).get("statements") or [],
            (now or {}).get("statements") or [],
            names,
        )
    return changes


# --- Consul ----------------------------------------------------------------------------------


def _consul(old: Facts, new: Facts, names: Names) -> list[Change]:
    changes: list[Change] = []
    policies = match(
        get(old, "consul", "acl_policies"),
        get(new, "consul", "acl_policies"),
        lambda p: rid(p["policy"]),
        lambda p: sorted(p.get("rules") or []),
    )
    for action, items in ((ADDED, policies.added), (REMOVED, policies.removed)):
        changes += [
            Change(
                "consul",
                action,
                f"ACL policy {p['name']}: {', '.join(p.get('rules') or []) or 'no rule'}",
                (p["policy"],),
                "new Consul ACL rules" if action == ADDED and p.get("rules") else "",
            )
            for p in items
        ]
    for was, now in policies.changed:
        gained = set(now.get("rules") or []) - set(was.get("rules") or [])
        changes.append(
            Change(
                "consul",
                CHANGED,
                f"ACL policy {now['name']}: rules "
                + plus_minus(was.get("rules") or [], now.get("rules") or []),
                (now["policy"],),
                f"new Consul ACL rules {', '.join(sorted(gained))}" if gained else "",
            )
        )
    tokens = match(
        get(old, "consul", "acl_tokens"),
        get(new, "consul", "acl_tokens"),
        lambda t: rid(t["token"]),
        lambda t: [sorted(t.get("policies") or []), sorted(t.get("service_identities") or [])],
    )

    def holds(token: Facts) -> list[str]:
        return [
            *(token.get("policies") or []),
            *(f"service identity {s}" for s in token.get("service_identities") or []),
        ]

    for action, items in ((ADDED, tokens.added), (REMOVED, tokens.removed)):
        changes += [
            Change(
                "consul",
                action,
                f"ACL token {names(t['token'])}: {', '.join(holds(t)) or 'nothing'}"
                + (f" (SecretID in {names(t['secret'])})" if t.get("secret") else ""),
                (t["token"],),
                "a new Consul token" if action == ADDED and holds(t) else "",
            )
            for t in items
        ]
    for was, now in tokens.changed:
        gained = set(holds(now)) - set(holds(was))
        changes.append(
            Change(
                "consul",
                CHANGED,
                f"ACL token {names(now['token'])}: {plus_minus(holds(was), holds(now))}",
                (now["token"],),
                f"the token gains {', '.join(sorted(gained))}" if gained else "",
            )
        )
    intentions = match(
        get(old, "consul", "intentions"),
        get(new, "consul", "intentions"),
        lambda i: (i["source"], i["destination"]),
        lambda i: i["action"],
    )
    for action, items in ((ADDED, intentions.added), (REMOVED, intentions.removed)):
        changes += [
            Change(
                "consul",
                action,
                f"intention {i['source']} → {i['destination']}: {i['action']}",
                (i["entry"],),
                "opens a mesh path" if action == ADDED and i["action"] == "allow" else "",
            )
            for i in items
        ]
    for was, now in intentions.changed:
        changes.append(
            Change(
                "consul",
                CHANGED,
                f"intention {now['source']} → {now['destination']}: "
                f"{was['action']} → {now['action']}",
                (now["entry"],),
                "opens a mesh path" if now["action"] == "allow" else "",
            )
        )
    entries = match(
        get(old, "consul", "config_entries"),
        get(new, "consul", "config_entries"),
        lambda e: (e["kind"], e["name"]),
        lambda e: e.get("body"),
    )
    for action, items in ((ADDED, entries.added), (REMOVED, entries.removed)):
        changes += [
            Change("consul", action, f"config entry {e['kind']} {e['name']}", (e["entry"],))
            for e in items
            if e["kind"] != "service-intentions"
        ]
    changes += [
        Change(
            "consul",
            CHANGED,
            f"config entry {now['kind']} {now['name']}: "
            + _body_delta(was.get("body"), now.get("body")),
            (now["entry"],),
        )
        for was, now in entries.changed
        if now["kind"] != "service-intentions"
    ]
    return changes


def _body_delta(was: object, now: object) -> str:
    if isinstance(was, dict) and isinstance(now, dict):
        keys = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
        return ", ".join(f"{k} {json.dumps(was.get(k))} → {json.dumps(now.get(k))}" for k in keys)
    return f"{json.dumps(was)} → {json.dumps(now)}"


def access_changes(old: Facts, new: Facts, names: Names) -> list[Change]:
    return [
        *_iam(old, new, names),
        *_secrets(old, new, names),
        *_policies(old, new, names),
        *_consul(old, new, names),
    ]
