"""The Consul side: ACL policies and their rules, which token holds which, and the intentions.

They are declared in the template as the Consul-object custom resources of
`mesh_stack/consul_objects.py` (contract: lambda/consul_config/objects.py):
- `Custom::ConsulAclPolicy`: `Name`, `Rules` (HCL), `Description`;
- `Custom::ConsulAclToken`: `Policies` (names, or the policy resource's Ref),
  `ServiceIdentities`, `TokenSecretArn` (the secret that receives the token's SecretID);
- `Custom::ConsulConfigEntry`: `Entry`, the config entry as JSON.
Tokens the servers mint at boot (management, agent, consul-esm) are not declared there: the
secrets section says so rather than guessing.

A service identity grants what Consul's built-in `builtin/service` templated policy grants
(hashicorp/consul agent/structs/acltemplatedpolicy/policies/ce/service.hcl): write on the
service and on `<service>-sidecar-proxy`, read on every service and every node.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from tools.review.load import Assembly, Json
from tools.review.model import Res
from tools.review.policy import as_list
from tools.review.refs import Resolver, flatten

ACL_POLICY = "Custom::ConsulAclPolicy"
ACL_TOKEN = "Custom::ConsulAclToken"  # noqa: S105 (a resource type)
CONFIG_ENTRY = "Custom::ConsulConfigEntry"

_BLOCK = re.compile(r'(\w+)\s+"([^"]*)"\s*\{\s*policy\s*=\s*"(\w+)"\s*\}', re.MULTILINE)
_TOP = re.compile(r'^\s*(\w+)\s*=\s*"(\w+)"\s*$', re.MULTILINE)


@dataclass(frozen=True, order=True)
class AclRule:
    resource: str  # node_prefix, service, key_prefix, operator, ...
    name: str  # the exact name or prefix; '' for a top-level rule or the empty prefix
    access: str  # read, write, list, deny

    @property
    def everything(self) -> bool:
        """An empty prefix: the rule applies to every name of its kind."""
        return self.resource.endswith("_prefix") and self.name == ""

    def text(self) -> str:
        if not self.resource.endswith("_prefix") and self.name == "" and self.resource in _TOPS:
            return f"{self.resource}:{self.access}"
        name = "*" if self.everything else (self.name + ("*" if "_prefix" in self.resource else ""))
        return f"{self.resource.removesuffix('_prefix')} {name}:{self.access}"


_TOPS = {"operator", "acl", "keyring", "mesh", "peering"}


@dataclass(frozen=True)
class AclPolicy:
    res: Res
    name: str
    description: str
    rules: tuple[AclRule, ...]
    raw: str  # the HCL as declared, for what the parser does not model


@dataclass(frozen=True)
class AclToken:
    res: Res
    description: str
    policies: tuple[str, ...]  # policy names
    service_identities: tuple[str, ...]
    secret: Res | None  # the secret that receives the SecretID
    rules: tuple[AclRule, ...]  # everything the token may do, from its policies and identities
    unresolved: tuple[str, ...]  # policies named but not declared in the templates


@dataclass(frozen=True, order=True)
class Intention:
    source: str
    destination: str
    action: str  # allow, deny, or "L7" when the source carries Permissions
    entry: Res


@dataclass(frozen=True)
class ConfigEntry:
    res: Res
    kind: str
    name: str
    body: str  # the entry as declared (compact JSON)


@dataclass(frozen=True)
class ConsulSide:
    policies: list[AclPolicy]
    tokens: list[AclToken]
    intentions: list[Intention]
    entries: list[ConfigEntry]

    def token_for(self, secret: Res) -> AclToken | None:
        return next((token for token in self.tokens if token.secret == secret), None)


def parse_rules(hcl: str) -> list[AclRule]:
    """Rules of an ACL policy in HCL (`<kind> "<name>" { policy = "<access>" }` and
    top-level `operator = "read"`-style lines)."""
    rules = [AclRule(kind, name, access) for kind, name, access in _BLOCK.findall(hcl)]
    stripped = _BLOCK.sub("", hcl)
    rules += [AclRule(kind, "", access) for kind, access in _TOP.findall(stripped) if kind in _TOPS]
    return sorted(set(rules))


def service_identity_rules(service: str) -> list[AclRule]:
    return [
        AclRule("service", service, "write"),
        AclRule("service", f"{service}-sidecar-proxy", "write"),
        AclRule("service_prefix", "", "read"),
        AclRule("node_prefix", "", "read"),
    ]


def _text(value: Json) -> str:
    return value if isinstance(value, str) else flatten(value)


def _intentions(res: Res, entry: dict[str, Json]) -> list[Intention]:
    found: list[Intention] = []
    for source in as_list(entry.get("Sources")):
        if not isinstance(source, dict):
            continue
        action = str(source.get("Action") or ("L7" if source.get("Permissions") else "?"))
        found.append(
            Intention(str(source.get("Name", "?")), str(entry.get("Name", "?")), action, res)
        )
    return found


def consul_side(assembly: Assembly) -> ConsulSide:
    resolver = Resolver(assembly)
    policies: dict[str, AclPolicy] = {}
    by_ref: dict[tuple[str, str], AclPolicy] = {}
    intentions: list[Intention] = []
    entries: list[ConfigEntry] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(ACL_POLICY):
            props = resource.get("Properties") or {}
            hcl = _text(props.get("Rules", ""))
            policy = AclPolicy(
                res=stack.res(logical_id),
                name=_text(props.get("Name", "")),
                description=_text(props.get("Description", "")),
                rules=tuple(parse_rules(hcl)),
                raw=hcl,
            )
            policies[policy.name] = policy
            by_ref[(stack.name, logical_id)] = policy
        for logical_id, resource in stack.resources_of(CONFIG_ENTRY):
            raw = _text((resource.get("Properties") or {}).get("Entry", ""))
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                entry = {}
            if not isinstance(entry, dict):
                entry = {}
            res = stack.res(logical_id)
            kind, name = str(entry.get("Kind", "?")), str(entry.get("Name", "?"))
            entries.append(ConfigEntry(res, kind, name, raw))
            if kind == "service-intentions":
                intentions += _intentions(res, entry)
    tokens: list[AclToken] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources_of(ACL_TOKEN):
            props = resource.get("Properties") or {}
            names: list[str] = []
            rules: set[AclRule] = set()
            unresolved: list[str] = []
            for value in as_list(props.get("Policies")):
                target = resolver.target(stack, value)
                named = by_ref.get((target.stack.name, target.logical_id)) if target else None
                if named is None and isinstance(value, str):
                    named = policies.get(value)
                if named is None:
                    unresolved.append(_text(value))
                    names.append(_text(value))
                    continue
                names.append(named.name)
                rules.update(named.rules)
            identities = tuple(_text(v) for v in as_list(props.get("ServiceIdentities")))
            for service in identities:
                rules.update(service_identity_rules(service))
            secret = resolver.target(stack, props.get("TokenSecretArn"))
            tokens.append(
                AclToken(
                    res=stack.res(logical_id),
                    description=_text(props.get("Description", "")),
                    policies=tuple(names),
                    service_identities=identities,
                    secret=secret.res if secret else None,
                    rules=tuple(sorted(rules)),
                    unresolved=tuple(unresolved),
                )
            )
    return ConsulSide(
        policies=sorted(policies.values(), key=lambda p: p.name),
        tokens=sorted(tokens, key=lambda t: t.res),
        intentions=sorted(intentions),
        entries=sorted(entries, key=lambda e: (e.kind, e.name)),
    )
