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

import fnmatch
import json
from collections.abc import Hashable

from tools.review.compare import (
    ADDED,
    CHANGED,
    REMOVED,
    Change,
    Facts,
    Names,
    additions_and_removals,
    canon,
    get,
    match,
    plus_minus,
    rid,
)
from tools.review.markdown import abridge
from tools.review.statement_risk import (
    condition_weakened,
    escalations,
    narrowing,
    wildcard_parts,
)

_MAY_DECRYPT = "a new principal may decrypt with the key"


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
    if kind == "NotAction":
        return bool(statement.get("not_action")) and value == ",".join(statement["actions"])
    if kind == "NotResource":
        return bool(statement.get("not_resource")) and value == ",".join(statement["resources"])
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


def _managed_why(gained: set[str], role: Facts) -> str:
    """A newly attached managed policy is broadening; say whether the review evaluated it."""
    if not gained:
        return ""
    unknown = sorted(set(role.get("managed_not_evaluated") or gained) & gained)
    if unknown:
        return f"a newly attached managed policy, contents not evaluated: {', '.join(unknown)}"
    return "a newly attached managed policy (its statements are listed from the pinned copy)"


def _trust_changes(name: str, where: tuple[Facts, ...], was: Facts, now: Facts) -> list[Change]:
    """Trust statements whose condition changed (who may assume the role is `assumed_by`)."""
    matched = match(
        was.get("trust") or [],
        now.get("trust") or [],
        lambda t: (
            t.get("effect"),
            tuple(t.get("principals") or []),
            tuple(t.get("actions") or []),
        ),
        lambda t: t.get("condition", ""),
    )
    changes: list[Change] = []
    for before, after in matched.changed:
        lost = condition_weakened(before.get("condition"), after.get("condition"))
        who = ", ".join(after.get("principals") or [])
        changes.append(
            Change(
                "iam",
                CHANGED,
                f"role {name} trust of {who}: condition {before.get('condition') or 'none'} → "
                f"{after.get('condition') or 'none'}",
                where,
                f"trust condition weakened: {', '.join(lost)}"
                if lost and after.get("effect") == "Allow"
                else "",
            )
        )
    return changes


def _role_changes(
    was: Facts | None, now: Facts | None, names: Names, old_acks: set[tuple[str, str]]
) -> list[Change]:
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
                    _managed_why(gained, now),
                )
            )
        changes += _trust_changes(name, where, was, now)
    changes += _statement_changes(name, where, was, now, old_acks)
    return changes


def _acknowledgement_text(wildcard: Facts, old_acks: set[tuple[str, str]]) -> str:
    """How a wildcard a changed statement carries is covered, judged against the baseline's
    acknowledgements: one that existed before was written for another statement."""
    if not wildcard.get("acknowledged"):
        return f"`{wildcard['finding']}` NOT acknowledged"
    cover = (wildcard.get("acknowledgements") or [{}])[0]
    reason = abridge(str(cover.get("reason", "")), 80)
    if (str(cover.get("at", "")), str(cover.get("reason", ""))) in old_acks:
        return (
            f"`{wildcard['finding']}` covered only by an acknowledgement written for another "
            f"statement (“{reason}”): re-judge"
        )
    return f"`{wildcard['finding']}` covered by a new acknowledgement (“{reason}”)"


def _statement_why(
    statement: Facts,
    was: Facts | None,
    wildcards: list[Facts],
    old_acks: set[tuple[str, str]],
) -> str:
    """Why an added (`was` None) or changed Allow statement broadens access ('' when not)."""
    if statement.get("effect") != "Allow" or (was is not None and narrowing(was, statement)):
        return ""
    reasons: list[str] = []
    parts = wildcard_parts(statement)
    if parts:
        covers = [
            _acknowledgement_text(w, old_acks)
            for w in wildcards
            if _explains(w["finding"], statement)
        ]
        text = f"a wildcard statement not in the baseline ({', '.join(parts)})"
        reasons.append(text + (": " + "; ".join(covers) if covers else ""))
    gained = escalations(statement)
    if was is not None and not (
        set(statement.get("resources") or []) - set(was.get("resources") or [])
    ):
        gained = [e for e in gained if e not in escalations(was)]
    if gained:
        on = ", ".join(statement.get("resources") or []) or "?"
        reasons.append(f"privilege escalation: {', '.join(gained)} on {on}")
    if was is not None:
        lost = condition_weakened(was.get("condition"), statement.get("condition"))
        if lost:
            reasons.append("condition weakened: " + ", ".join(lost))
    return "; ".join(reasons)


def _statement_changes(
    name: str,
    where: tuple[Facts, ...],
    was: Facts | None,
    now: Facts | None,
    old_acks: set[tuple[str, str]],
) -> list[Change]:
    matched = match(
        (was or {}).get("statements") or [], (now or {}).get("statements") or [], _statement_id
    )
    pairs, removed, added = _pair(matched.removed, matched.added)
    old_findings = {w["finding"] for w in (was or {}).get("wildcards") or []}
    wildcards = (now or {}).get("wildcards") or []
    new_wildcards = [w for w in wildcards if w["finding"] not in old_findings]
    shown: set[str] = set()
    changes: list[Change] = []

    def wildcards_of(statement: Facts) -> str:
        found = [w for w in new_wildcards if _explains(w["finding"], statement)]
        shown.update(w["finding"] for w in found)
        text = "; ".join(_wildcard_text(w) for w in found)
        return f" — {text}" if text else ""

    for statement in added:
        extra = wildcards_of(statement)
        why = _statement_why(statement, None, wildcards, old_acks)
        changes.append(
            Change("iam", ADDED, f"{name}: {_statement_text(statement)}{extra}", where, why)
        )
    for was_stmt, now_stmt in pairs:
        extra = wildcards_of(now_stmt)
        why = _statement_why(now_stmt, was_stmt, wildcards, old_acks)
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
    old_acks = {
        (str(ack.get("at", "")), str(ack.get("reason", "")))
        for ack in get(old, "checks", "nag", "acknowledgements")
    }
    changes: list[Change] = []
    for key in sorted(before.keys() | after.keys(), key=str):
        changes += _role_changes(before.get(key), after.get(key), names, old_acks)
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

    def changed_why(was: Facts, now: Facts) -> str:
        reasons = []
        gained = sorted(set(now.get("actions") or []) - set(was.get("actions") or []))
        if gained:
            reasons.append(f"{why}: gains {', '.join(gained)}")
        lost = condition_weakened(was.get("condition"), now.get("condition"))
        if lost:
            reasons.append("condition weakened: " + ", ".join(lost))
        return "; ".join(reasons)

    changes = additions_and_removals("secrets", matched, text, where, lambda _: why)
    changes += [
        Change(
            "secrets",
            CHANGED,
            f"{text(now)} (was {'/'.join(was.get('actions') or [])}, "
            f"{was.get('how', '')}{' if ' + was['condition'] if was.get('condition') else ''})",
            where(now),
            changed_why(was, now),
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

    changes = additions_and_removals("secrets", matched, text, lambda s: (s["secret"],))
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
    management = {
        rid(s["secret"])
        for side in (old, new)
        for s in get(side, "secrets", "secrets")
        if "management" in str(s.get("description") or "").lower()
    }
    changes += additions_and_removals(
        "secrets",
        injections,
        lambda i: (
            f"{names(i['secret'])} injected into {names(i['where'])}: {i['kind']} {i['detail']}"
            + (
                " [a management token: whoever reads it holds every Consul permission]"
                if rid(i["secret"]) in management
                else ""
            )
        ),
        lambda i: (i["where"],),
    )
    unresolved = match(
        get(old, "secrets", "unresolved_access"),
        get(new, "secrets", "unresolved_access"),
        lambda u: (_principal_id(u), u["value"], tuple(u.get("actions") or [])),
    )
    changes += additions_and_removals(
        "secrets",
        unresolved,
        lambda u: (
            f"{_principal(u, names)} may {'/'.join(u.get('actions') or [])} `{u['value']}`, "
            f"which the review cannot resolve: {'; '.join(u.get('why') or [])}"
        ),
        lambda u: tuple(r for r in (u.get("principal"), u.get("policy")) if r),
        lambda _: "a secret grant the review cannot resolve",
    )
    dynamic = match(
        get(old, "secrets", "dynamic_references"),
        get(new, "secrets", "dynamic_references"),
        lambda d: (rid(d["where"]), d["path"]),
    )
    changes += additions_and_removals(
        "secrets",
        dynamic,
        lambda d: (
            f"dynamic reference `{{{{resolve:secretsmanager:…}}}}` in {names(d['where'])} "
            f"at {d['path']}"
        ),
        lambda d: (d["where"],),
        lambda _: "a secret's value is written into the resource",
    )
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
    """True when the actions include Decrypt, spelled `kms:Decrypt`, `Decrypt` (role grants
    list actions without their prefix) or as a wildcard that matches it."""
    return any(
        fnmatch.fnmatchcase("kms:decrypt", action.lower())
        or fnmatch.fnmatchcase("decrypt", action.lower())
        for action in actions
    )


def _statements(
    owner: str, where: tuple[Facts, ...], old: list[Facts], new: list[Facts], names: Names
) -> list[Change]:
    matched = match(
        old,
        new,
        lambda s: canon({k: v for k, v in s.items() if k not in ("sid", "condition", "flag")}),
        lambda s: s.get("condition", ""),
    )

    def why(statement: Facts) -> str:
        if statement.get("flag"):
            return str(statement["flag"])
        decrypts = statement.get("effect") == "Allow" and _decrypts(statement.get("actions") or [])
        return _MAY_DECRYPT if decrypts and owner.startswith("key") else ""

    changes = additions_and_removals(
        "policies",
        matched,
        lambda s: f"{owner}: {_doc_statement_text(s, names)}",
        lambda _: where,
        why,
    )
    for was, now in matched.changed:
        lost = condition_weakened(was.get("condition"), now.get("condition"))
        reasons = [str(now.get("flag") or "")]
        if lost and now.get("effect") == "Allow":
            reasons.append("condition weakened: " + ", ".join(lost))
        changes.append(
            Change(
                "policies",
                CHANGED,
                f"{owner}: {_doc_statement_text(now, names)} "
                f"(condition {was.get('condition') or 'none'} → {now.get('condition') or 'none'})",
                where,
                "; ".join(r for r in reasons if r),
            )
        )
    return changes


def _key_changes(was: Facts | None, now: Facts | None, names: Names) -> list[Change]:
    key = (now or was or {})["key"]
    owner = f"key {names(key)}"
    changes: list[Change] = []
    if was is None or now is None:
        rotation = (now or was or {}).get("rotation")
        changes.append(
            Change("policies", ADDED if now else REMOVED, f"{owner}, rotation {rotation}", (key,))
        )
    elif was.get("rotation") != now.get("rotation"):
        rotation = f"rotation {was.get('rotation')} → {now.get('rotation')}"
        changes.append(Change("policies", CHANGED, f"{owner}: {rotation}", (key,)))
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
        lambda g: (_principal_id(g), tuple(g.get("actions") or [])),
        lambda g: g.get("condition", ""),
    )
    changes += additions_and_removals(
        "policies",
        grants,
        lambda g: (
            f"{owner}: {_principal(g, names)} may {', '.join(g.get('actions') or [])} "
            "(its own policy)" + (f" if {g['condition']}" if g.get("condition") else "")
        ),
        lambda g: tuple(r for r in (key, g.get("principal")) if r),
        lambda g: _MAY_DECRYPT if _decrypts(g.get("actions") or []) else "",
    )
    for before, after in grants.changed:
        lost = condition_weakened(before.get("condition"), after.get("condition"))
        changes.append(
            Change(
                "policies",
                CHANGED,
                f"{owner}: {_principal(after, names)} may {', '.join(after.get('actions') or [])} "
                f"(its own policy; condition {before.get('condition') or 'none'} → "
                f"{after.get('condition') or 'none'})",
                tuple(r for r in (key, after.get("principal")) if r),
                f"condition weakened: {', '.join(lost)}" if lost else "",
            )
        )
    return changes


def _policies(old: Facts, new: Facts, names: Names) -> list[Change]:
    changes: list[Change] = []
    keys_old = {rid(k["key"]): k for k in get(old, "policies", "kms_keys")}
    keys_new = {rid(k["key"]): k for k in get(new, "policies", "kms_keys")}
    for key_id in sorted(keys_old.keys() | keys_new.keys(), key=str):
        changes += _key_changes(keys_old.get(key_id), keys_new.get(key_id), names)
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


def _acl_policies(old: Facts, new: Facts) -> list[Change]:
    matched = match(
        get(old, "consul", "acl_policies"),
        get(new, "consul", "acl_policies"),
        lambda p: rid(p["policy"]),
        lambda p: sorted(p.get("rules") or []),
    )
    changes = additions_and_removals(
        "consul",
        matched,
        lambda p: f"ACL policy {p['name']}: {', '.join(p.get('rules') or []) or 'no rule'}",
        lambda p: (p["policy"],),
        lambda p: "new Consul ACL rules" if p.get("rules") else "",
    )
    for was, now in matched.changed:
        gained = set(now.get("rules") or []) - set(was.get("rules") or [])
        rules = plus_minus(was.get("rules") or [], now.get("rules") or [])
        changes.append(
            Change(
                "consul",
                CHANGED,
                f"ACL policy {now['name']}: rules {rules}",
                (now["policy"],),
                f"new Consul ACL rules {', '.join(sorted(gained))}" if gained else "",
            )
        )
    return changes


def _holds(token: Facts) -> list[str]:
    return [
        *(token.get("policies") or []),
        *(f"service identity {s}" for s in token.get("service_identities") or []),
    ]


def _acl_tokens(old: Facts, new: Facts, names: Names) -> list[Change]:
    matched = match(
        get(old, "consul", "acl_tokens"),
        get(new, "consul", "acl_tokens"),
        lambda t: rid(t["token"]),
        _holds,
    )
    changes = additions_and_removals(
        "consul",
        matched,
        lambda t: (
            f"ACL token {names(t['token'])}: {', '.join(_holds(t)) or 'nothing'}"
            + (f" (SecretID in {names(t['secret'])})" if t.get("secret") else "")
        ),
        lambda t: (t["token"],),
        lambda t: "a new Consul token" if _holds(t) else "",
    )
    for was, now in matched.changed:
        gained = set(_holds(now)) - set(_holds(was))
        changes.append(
            Change(
                "consul",
                CHANGED,
                f"ACL token {names(now['token'])}: {plus_minus(_holds(was), _holds(now))}",
                (now["token"],),
                f"the token gains {', '.join(sorted(gained))}" if gained else "",
            )
        )
    return changes


def _intentions(old: Facts, new: Facts) -> list[Change]:
    matched = match(
        get(old, "consul", "intentions"),
        get(new, "consul", "intentions"),
        lambda i: (i["source"], i["destination"]),
        lambda i: i["action"],
    )
    opens = "opens a mesh path"
    changes = additions_and_removals(
        "consul",
        matched,
        lambda i: f"intention {i['source']} → {i['destination']}: {i['action']}",
        lambda i: (i["entry"],),
        lambda i: opens if i["action"] == "allow" else "",
    )
    changes += [
        Change(
            "consul",
            CHANGED,
            f"intention {now['source']} → {now['destination']}: {was['action']} → {now['action']}",
            (now["entry"],),
            opens if now["action"] == "allow" else "",
        )
        for was, now in matched.changed
    ]
    return changes


def _config_entries(old: Facts, new: Facts) -> list[Change]:
    """Config entries other than intentions (which `_intentions` reports source by source)."""

    def entries(facts: Facts) -> list[Facts]:
        found = get(facts, "consul", "config_entries")
        return [e for e in found if e["kind"] != "service-intentions"]

    matched = match(
        entries(old), entries(new), lambda e: (e["kind"], e["name"]), lambda e: e.get("body")
    )
    changes = additions_and_removals(
        "consul",
        matched,
        lambda e: f"config entry {e['kind']} {e['name']}",
        lambda e: (e["entry"],),
    )
    changes += [
        Change(
            "consul",
            CHANGED,
            f"config entry {now['kind']} {now['name']}: "
            + _body_delta(was.get("body"), now.get("body")),
            (now["entry"],),
        )
        for was, now in matched.changed
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
        *_acl_policies(old, new),
        *_acl_tokens(old, new, names),
        *_intentions(old, new),
        *_config_entries(old, new),
    ]
