"""Consul ACL policies, tokens and config entries, declared in CDK and applied at deploy time.

`ConsulObjects` owns a custom resource provider whose Lambda runs in the VPC and talks to the
Consul servers over HTTPS (verified against the Consul CA) with the management token. Each
`add_*` method declares one Consul object as a custom resource; CloudFormation creates,
updates and deletes it with the stack. The provider waits for the fleet to have a Raft leader,
so objects can be declared in the same deployment that creates the servers.

Default posture, created by the constructor:
- `proxy-defaults` (`global`) with the configured protocol (`tcp` unless told otherwise);
- a `service-intentions` entry for `*` with source `*` denied. Consul CE already denies
  unmatched mesh traffic when `acl.default_policy = "deny"` (its default intention action
  follows the ACL default policy unless the servers set `default_intention_policy`); the
  explicit wildcard deny keeps the posture even if either setting changes. It has the lowest
  precedence (`*` to `*`), so every specific allow overrides it.

Token secrets: `add_token` creates a Secrets Manager secret (customer-managed KMS key) that the
provider fills with the token's SecretID. The secret returned carries the custom resource's
output as its ARN, so whatever references it (an ECS task definition, the registrar's role)
is deployed only after the token exists in Consul.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jsii
from aws_cdk import (
    Aws,
    CfnResource,
    CustomResource,
    Duration,
    IStableStringProducer,
    Lazy,
    Stack,
    Token,
)
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct, IConstruct, IDependable

from mesh_stack import lambda_code
from mesh_stack.key_use import encrypt_environment, grant_secret_read
from mesh_stack.nag import acknowledge
from mesh_stack.services_config import pascal

ROOT = Path(__file__).resolve().parent.parent
IDENTITY_PATH = ROOT / "lambda" / "registrar" / "identity.py"

PROXY_PROTOCOLS = ("tcp", "http", "http2", "grpc")
INTENTION_ACTIONS = ("allow", "deny")
WILDCARD = "*"
REGISTRAR_POLICY_NAME = "ecs-registrar"
OPERATOR_POLICY_NAME = "operator-read-only"

_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")


def _load_identity() -> ModuleType:
    """The registrar's shared naming module (lambda/ is not a package, so load it by path)."""
    spec = importlib.util.spec_from_file_location("consul_mesh_registrar_identity", IDENTITY_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {IDENTITY_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_identity = _load_identity()
NODE_PREFIX: str = _identity.NODE_PREFIX
STATE_PREFIX: str = _identity.STATE_PREFIX
_valid_service_name: Callable[[str], bool] = _identity.valid_service_name


def _pascal(name: str) -> str:
    """`frontend-api` -> `FrontendApi`, `*` -> `Wildcard`: construct IDs from Consul names."""
    if name == WILDCARD:
        return "Wildcard"
    return pascal(name)


def _check_service(name: str, what: str, *, wildcard: bool = False) -> None:
    if Token.is_unresolved(name) or (wildcard and name == WILDCARD):
        return
    if not _valid_service_name(name):
        allowed = "a DNS label (lowercase letters, digits, '-', at most 63)"
        raise ValueError(f"{what} must be {allowed}{' or *' if wildcard else ''}, got {name!r}")


def registrar_rules(services: Sequence[str] | None = None) -> str:
    """ACL rules of the registrar (docs/architecture.md), as HCL.

    - `node_prefix "ecs-task-"` write: every task is registered on its own synthetic node
      and deregistered by deleting that node; no other node is writable.
    - service write: registering a service instance needs `service:write` on its name, and a
      connect-proxy sidecar also on its own name (`<service>-sidecar-proxy`). With `services`
      unset this is `service_prefix ""`: the registrar registers whatever service name a task
      definition's `consul-mesh.service` label names, and a name unknown at synth time cannot
      be listed. Pass `services` to narrow it to those services and their sidecars; tasks
      naming any other service are then refused by Consul (403) and end in the DLQ.
    - `key_prefix "ecs-registrar/"` write: the per-task state records (ordering, tombstones).
    Reads need nothing more: reconcile lists only nodes and services it can write, and
    `/v1/status/leader` needs no token.
    """
    blocks = [("node_prefix", NODE_PREFIX)]
    if services is None:
        blocks.append(("service_prefix", ""))
    else:
        for name in services:
            _check_service(name, "registrar service")
            blocks += [("service", name), ("service", f"{name}-sidecar-proxy")]
    blocks.append(("key_prefix", STATE_PREFIX))
    return "\n".join(f'{rule} "{name}" {{\n  policy = "write"\n}}' for rule, name in blocks) + "\n"


def operator_rules() -> str:
    """ACL rules of the operators' token (docs/runbook.md), as HCL: reads, never a write.

    Syntax and scope of each rule from Consul's ACL rule reference (hashicorp/consul
    `website/content/docs/reference/acl/rule.mdx`):
    - `node_prefix ""` / `service_prefix ""` read: the catalog and health of every node and
      service, as the UI and `consul catalog ...` show them; `intentions = "read"` to see the
      intentions (service rules also govern intentions);
    - `agent_prefix ""` read: `consul members` and the servers' agent pages;
    - `key_prefix "ecs-registrar/"` read: the registrar's ordering records, nothing else of KV;
    - `operator = "read"`: Raft peers and autopilot health (`consul operator raft list-peers`);
    - `mesh = "read"`: mesh-wide config entries (proxy-defaults).
    No `acl` rule: `acl = "read"` would list every token, and snapshots need `acl = "write"`
    (same page), so backups stay with the servers' own snapshot job. Writes are break-glass,
    with the management token (docs/runbook.md).
    """
    blocks = [
        'node_prefix "" {\n  policy = "read"\n}',
        'service_prefix "" {\n  policy = "read"\n  intentions = "read"\n}',
        'agent_prefix "" {\n  policy = "read"\n}',
        f'key_prefix "{STATE_PREFIX}" {{\n  policy = "read"\n}}',
        'operator = "read"',
        'mesh = "read"',
    ]
    return "\n".join(blocks) + "\n"


def _cfn(construct: IConstruct) -> CfnResource:
    child = construct.node.default_child
    if not isinstance(child, CfnResource):
        raise TypeError(f"{construct.node.path} has no CloudFormation resource")
    return child


@jsii.implements(IStableStringProducer)
class _JsonProducer:
    """Renders a value as JSON when the template is synthesized (after every add_* call)."""

    def __init__(self, render: Callable[[], object]) -> None:
        self._render = render

    def produce(self) -> str | None:
        return json.dumps(self._render(), sort_keys=True)


@jsii.implements(ec2.IConnectable)
class ConsulObjects(Construct):
    """Declares Consul objects; a provider Lambda in the VPC applies them over HTTPS.

    vpc / vpc_subnets: where the provider's functions run (default: private subnets with
        egress; they need Secrets Manager, Lambda and Step Functions endpoints or a NAT).
    consul_https_address: `https://<nlb-dns>:8501`; the stack must let `connections` reach
        it (`fleet.allow_from(objects)`): the provider's security group allows no other egress
        than HTTPS 443 to AWS APIs.
    tls_server_name: name the servers' certificate carries (the NLB DNS name); used for SNI
        and hostname verification.
    management_token_secret / ca_cert_secret: read (only these two) at every call.
    kms_key: customer-managed key of the token secrets this construct creates, of the
        provider's log groups (its key policy must let CloudWatch Logs use it, as `Keys.key`'s
        does) and of every provider function's environment.
    proxy_protocol: protocol of `proxy-defaults` (`tcp`, `http`, `http2`, `grpc`); `tcp`
        works for any application, `http` enables L7 metrics and routing.
    timeout: how long one object may wait for the fleet to elect a leader (max 1 hour).
    apply_generation: bumping it changes a property of every object, so the next deploy sends
        each an Update and the provider re-applies it: it re-creates what Consul lost (a restore
        of a snapshot older than the objects) and mints a new SecretID for every token deleted
        in Consul (token rotation, docs/operations.md). 0 adds no property.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        consul_https_address: str,
        tls_server_name: str,
        management_token_secret: secretsmanager.ISecret,
        ca_cert_secret: secretsmanager.ISecret,
        kms_key: kms.IKey,
        vpc_subnets: ec2.SubnetSelection | None = None,
        proxy_protocol: str = "tcp",
        timeout: Duration | None = None,
        apply_generation: int = 0,
    ) -> None:
        super().__init__(scope, construct_id)
        if apply_generation < 0:
            raise ValueError(f"apply_generation must be 0 or more, got {apply_generation}")
        if not Token.is_unresolved(consul_https_address) and not re.match(
            r"^https://[^/\s]+$", consul_https_address
        ):
            raise ValueError(
                "consul_https_address must be https://<host>:<port> (no path), "
                f"got {consul_https_address!r}"
            )
        if proxy_protocol not in PROXY_PROTOCOLS:
            allowed = ", ".join(PROXY_PROTOCOLS)
            raise ValueError(f"proxy_protocol must be one of {allowed}, got {proxy_protocol!r}")
        self._kms_key = kms_key
        self._connection = {
            "ConsulHttpAddr": consul_https_address,
            "TlsServerName": tls_server_name,
            "ManagementTokenSecretArn": management_token_secret.secret_arn,
            "CaCertSecretArn": ca_cert_secret.secret_arn,
        }
        if apply_generation:
            self._connection["ApplyGeneration"] = str(apply_generation)
        total_timeout = timeout or Duration.minutes(30)
        # CloudFormation waits an hour for a custom resource's answer unless told otherwise. The
        # framework answers within total_timeout (its waiter's onTimeout reports the failure),
        # so CloudFormation's own deadline only matters if the framework itself dies: a little
        # more than the framework's bound, never the default hour.
        self._service_timeout = Duration.seconds(min(3600, total_timeout.to_seconds() + 300))
        self._objects: list[CustomResource] = []
        self._dependencies: list[IDependable] = []
        self._claimed: dict[str, str] = {}  # Consul identity -> construct path
        self._intentions: dict[str, dict[str, str]] = {}  # destination -> source -> action
        self._intention_resources: dict[str, CustomResource] = {}
        subnets = vpc_subnets or ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Consul config provider: HTTPS to AWS APIs and to Consul (8501)",
            allow_all_outbound=False,
        )
        # Egress to Consul is added by the stack's wiring (`fleet.allow_from(objects)`), which
        # opens exactly the NLB's security group on its client ports.
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "AWS APIs (Secrets Manager) via NAT"
        )
        self._connections = ec2.Connections(security_groups=[self.security_group])

        self.log_group = logs.LogGroup(
            self, "Logs", retention=logs.RetentionDays.ONE_YEAR, encryption_key=kms_key
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Consul config provider: reads the Consul secrets, fills token secrets",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AWSLambdaVPCAccessExecutionRole"
                )
            ],
        )
        grant_secret_read(self.role, management_token_secret, ca_cert_secret)
        # Writing a token secret: Secrets Manager asks KMS for a data key on the caller's
        # behalf (and Decrypt for the secrets it reads); only through Secrets Manager.
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[kms_key.key_arn],
                conditions={
                    "StringEquals": {"kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com"}
                },
            )
        )

        code = lambda_code.for_asset("consul_config")
        functions: dict[str, lambda_.Function] = {}
        for name, handler, purpose in (
            ("OnEvent", "provider.on_event", "validates and names Consul objects"),
            ("IsComplete", "provider.is_complete", "waits for a Consul leader, applies objects"),
        ):
            functions[name] = lambda_.Function(
                self,
                name,
                runtime=lambda_.Runtime.PYTHON_3_14,
                architecture=lambda_.Architecture.ARM_64,
                handler=handler,
                code=code,
                role=self.role,
                vpc=vpc,
                vpc_subnets=subnets,
                security_groups=[self.security_group],
                timeout=Duration.minutes(1),
                memory_size=256,
                log_group=self.log_group,
                description=f"Consul config provider: {purpose}",
            )
        self.on_event_function = functions["OnEvent"]
        self.is_complete_function = functions["IsComplete"]

        framework_sg = ec2.SecurityGroup(
            self,
            "FrameworkSecurityGroup",
            vpc=vpc,
            description="Custom resource framework: HTTPS to Lambda, Step Functions, S3",
            allow_all_outbound=False,
        )
        framework_sg.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "AWS APIs and the CloudFormation response URL"
        )
        framework_logs = logs.LogGroup(
            self, "FrameworkLogs", retention=logs.RetentionDays.ONE_YEAR, encryption_key=kms_key
        )
        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.on_event_function,
            is_complete_handler=self.is_complete_function,
            query_interval=Duration.seconds(10),
            total_timeout=total_timeout,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[framework_sg],
            log_group=framework_logs,
            # Every waiter step is logged; execution data stays out of the logs because the
            # event carries CloudFormation's pre-signed response URL.
            disable_waiter_state_machine_logging=False,
            waiter_state_machine_log_options=cr.LogOptions(
                destination=framework_logs, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
        )
        encrypt_environment(
            kms_key,
            self.on_event_function,
            self.is_complete_function,
            *(c for c in self.provider.node.find_all() if isinstance(c, lambda_.Function)),
        )
        self._acknowledge_findings()

        self.proxy_defaults = self.add_config_entry(
            "ProxyDefaults",
            {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": proxy_protocol}},
        )
        self.default_deny = self.intention(WILDCARD, WILDCARD, "deny")

    @property
    def connections(self) -> ec2.Connections:
        """The provider's security group: `fleet.allow_from(objects)` lets it reach Consul.

        A property (not an attribute) so jsii sees it when the construct is passed to CDK
        as an `IConnectable`.
        """
        return self._connections

    def _acknowledge_findings(self) -> None:
        """cdk-nag findings no setting of ours can fix, each with its compensating control."""
        vpc_access = "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        acknowledge(
            self.role,
            f"AwsSolutions-IAM4[{vpc_access}AWSLambdaVPCAccessExecutionRole]",
            "AWS's minimum for a Lambda in a VPC (its logs, its ENIs), whose actions take no "
            "resource ARN; all Consul-related access is in the role's own scoped statements.",
        )
        acknowledge(
            self.role,
            "NIST.800.53.R5-IAMNoInlinePolicy",
            "CDK-generated policy attached to this role only, scoped to two secrets, the token "
            "secrets and one KMS key; a managed policy would grant the same to no one else.",
        )
        for function in (self.on_event_function, self.is_complete_function):
            acknowledge(
                function,
                "NIST.800.53.R5-LambdaDLQ",
                "Invoked synchronously by the custom resource framework, which reports every "
                "failure to CloudFormation; a DLQ only serves asynchronous invocations.",
            )
            acknowledge(
                function,
                "NIST.800.53.R5-LambdaConcurrency",
                "Runs only during deployments, once per Consul object per poll; reserving "
                "concurrency would fail deploys in accounts with the default low quota.",
            )
        # The framework's functions, roles and waiter are created by aws-cdk-lib's Provider.
        provider = self.provider
        for rule, reason in (
            (
                f"AwsSolutions-IAM4[{vpc_access}AWSLambdaBasicExecutionRole]",
                "CDK's provider framework role: AWS's minimum for a Lambda to write its logs.",
            ),
            (
                f"AwsSolutions-IAM4[{vpc_access}AWSLambdaVPCAccessExecutionRole]",
                "CDK's provider framework role: AWS's minimum for a Lambda to attach VPC ENIs.",
            ),
            (
                "NIST.800.53.R5-IAMNoInlinePolicy",
                "CDK's provider framework policies, attached to its own roles only and scoped to "
                "the two provider functions and the waiter state machine.",
            ),
            (
                "NIST.800.53.R5-LambdaDLQ",
                "CDK's provider framework functions report every failure to CloudFormation "
                "themselves (the waiter's onTimeout reports timeouts); nothing is dropped.",
            ),
            (
                "NIST.800.53.R5-LambdaConcurrency",
                "CDK's provider framework: runs only during deployments, once per Consul object; "
                "a reservation would fail deploys in accounts with the default low quota.",
            ),
            (
                "AwsSolutions-IAM5[Resource::*]",
                "CDK's provider waiter logs to CloudWatch Logs: Step Functions log delivery "
                "actions (logs:CreateLogDelivery and friends) accept no resource ARN.",
            ),
            (
                "AwsSolutions-SF2",
                "CDK's provider waiter only polls the isComplete function; the Provider offers no "
                "tracing option, and every step is logged at level ALL.",
            ),
        ):
            acknowledge(provider, rule, reason)
        for function in (self.on_event_function, self.is_complete_function):
            logical = Stack.of(self).resolve(Stack.of(self).get_logical_id(_cfn(function)))
            acknowledge(
                provider,
                f"AwsSolutions-IAM5[Resource::<{logical}.Arn>:*]",
                "The framework invokes any version of this one provider function (`:*` is the "
                "version qualifier), nothing else.",
            )
        for name in ("framework-isComplete", "framework-onTimeout"):
            framework_fn = provider.node.find_child(name)
            logical = Stack.of(self).resolve(Stack.of(self).get_logical_id(_cfn(framework_fn)))
            acknowledge(
                provider,
                f"AwsSolutions-IAM5[Resource::<{logical}.Arn>:*]",
                "The waiter state machine invokes any version of this one framework function "
                "(`:*` is the version qualifier), nothing else.",
            )

    # ------------------------------------------------------------------ generic objects

    def depend_on(self, *targets: IDependable) -> None:
        """Make every Consul object (declared so far and later) depend on `targets`.

        Pass the server fleet: objects are then created after it and, more importantly,
        deleted before it when the stack is deleted (the provider needs a live leader).
        """
        self._dependencies.extend(targets)
        for resource in self._objects:
            resource.node.add_dependency(*targets)

    def _claim(self, identity: str, construct_id: str) -> None:
        if identity in self._claimed:
            raise ValueError(
                f"{identity} is already declared by {self._claimed[identity]}; "
                f"{construct_id} would manage the same Consul object"
            )
        self._claimed[identity] = construct_id

    def _object(
        self, construct_id: str, object_type: str, properties: Mapping[str, Any]
    ) -> CustomResource:
        resource = CustomResource(
            self,
            construct_id,
            service_token=self.provider.service_token,
            resource_type=f"Custom::Consul{object_type}",
            properties={"ObjectType": object_type, **self._connection, **properties},
            service_timeout=self._service_timeout,
        )
        if self._dependencies:
            resource.node.add_dependency(*self._dependencies)
        # The provider's security group and every rule on it, including the egress to Consul
        # that the stack adds later: created before the object, deleted only after it, so the
        # delete still reaches Consul instead of waiting DELETE_GIVE_UP_SECONDS and giving up
        # (leaving the object in Consul).
        resource.node.add_dependency(self.security_group)
        self._objects.append(resource)
        return resource

    def add_policy(
        self, construct_id: str, name: str, rules: str, description: str = ""
    ) -> CustomResource:
        """An ACL policy; `resource.ref` is its name (use it in `add_token` to order them)."""
        if not Token.is_unresolved(name) and not _POLICY_NAME.match(name):
            raise ValueError(
                f"ACL policy name must be letters, digits, '-' or '_' (<= 128), got {name!r}"
            )
        self._claim(f"acl-policy/{name}", construct_id)
        return self._object(
            construct_id, "AclPolicy", {"Name": name, "Rules": rules, "Description": description}
        )

    def add_token(
        self,
        construct_id: str,
        description: str,
        policies: Sequence[str],
        service_identities: Sequence[str] | None = None,
    ) -> secretsmanager.ISecret:
        """An ACL token whose SecretID lands in a new KMS-encrypted secret, which is returned.

        policies: policy names (pass `add_policy(...).ref` so the token follows the policy).
        service_identities: service names; each grants `service:write` on the service and its
            `-sidecar-proxy`, plus `service:read`/`node:read` everywhere (Consul's template).
        """
        identities = list(service_identities or [])
        for name in identities:
            _check_service(name, "service identity")
        if not policies and not identities:
            raise ValueError(f"token {construct_id} needs at least one policy or service identity")
        secret = secretsmanager.Secret(
            self,
            f"{construct_id}Secret",
            description=f"Consul ACL token (SecretID): {description}",
            encryption_key=self._kms_key,
        )
        resource = self._object(
            construct_id,
            "AclToken",
            {
                "Description": description,
                "Policies": list(policies),
                "ServiceIdentities": identities,
                "TokenSecretArn": secret.secret_arn,
            },
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:PutSecretValue"], resources=[secret.secret_arn]
            )
        )
        acknowledge(
            secret,
            "AwsSolutions-SMG4",
            "Holds a Consul ACL SecretID that only Consul can mint; it is rotated by deleting the "
            "token in Consul and bumping consul_objects_generation, which makes the provider "
            "mint a new one (docs/operations.md). A rotation Lambda would desync Consul.",
        )
        acknowledge(
            secret,
            "NIST.800.53.R5-SecretsManagerRotationEnabled",
            "Consul ACL SecretID: rotated by deleting it in Consul and re-applying the objects "
            "(consul_objects_generation, docs/operations.md); least-privilege, "
            "KMS-encrypted, revocable in Consul at any time.",
        )
        return secretsmanager.Secret.from_secret_attributes(
            self,
            f"{construct_id}Filled",
            secret_complete_arn=resource.get_att_string("TokenSecretArn"),
            encryption_key=self._kms_key,
        )

    def add_config_entry(self, construct_id: str, entry: Mapping[str, Any]) -> CustomResource:
        """A config entry (`Kind` and `Name` required), written as declared, deleted with it."""
        kind, name = entry.get("Kind"), entry.get("Name")
        if not isinstance(kind, str) or not isinstance(name, str) or not kind or not name:
            raise ValueError(f"config entry {construct_id} needs Kind and Name, got {entry!r}")
        self._claim(f"config/{kind}/{name}", construct_id)
        text = json.dumps(dict(entry), sort_keys=True)
        return self._object(construct_id, "ConfigEntry", {"Entry": text})

    # ------------------------------------------------------------------ ready-made objects

    def registrar_token(self, services: Sequence[str] | None = None) -> secretsmanager.ISecret:
        """The registrar's token: `registrar_rules(services)` and nothing else."""
        policy = self.add_policy(
            "RegistrarPolicy",
            REGISTRAR_POLICY_NAME,
            registrar_rules(services),
            "ECS Anywhere registrar: task nodes, their services and sidecars, its KV records",
        )
        return self.add_token("RegistrarToken", "ECS Anywhere registrar", [policy.ref])

    def operator_token(self) -> secretsmanager.ISecret:
        """The operators' token: `operator_rules()`, read-only, for the UI and the CLI."""
        policy = self.add_policy(
            "OperatorPolicy",
            OPERATOR_POLICY_NAME,
            operator_rules(),
            "Operators: read the catalog, health, intentions, Raft and the registrar's records",
        )
        return self.add_token("OperatorToken", "Operators (read-only)", [policy.ref])

    def service_token(self, service_name: str) -> secretsmanager.ISecret:
        """Token of `service_name`'s Envoy sidecars: the service identity of the service.

        Agentless Envoy authorizes its xDS stream with `service:write` on the proxy's
        destination service; the identity also covers `<service>-sidecar-proxy` and gives the
        `service:read`/`node:read` needed to discover upstreams.
        """
        _check_service(service_name, "service_name")
        return self.add_token(
            f"{_pascal(service_name)}SidecarToken",
            f"Envoy sidecar of {service_name}",
            [],
            [service_name],
        )

    def service_defaults(self, service_name: str, protocol: str) -> CustomResource:
        """`service-defaults` setting the protocol of one service (e.g. `http` for L7)."""
        _check_service(service_name, "service_name")
        if protocol not in PROXY_PROTOCOLS:
            raise ValueError(
                f"protocol must be one of {', '.join(PROXY_PROTOCOLS)}, got {protocol!r}"
            )
        return self.add_config_entry(
            f"{_pascal(service_name)}ServiceDefaults",
            {"Kind": "service-defaults", "Name": service_name, "Protocol": protocol},
        )

    def intention(self, source: str, destination: str, action: str = "allow") -> CustomResource:
        """Allow (or deny) `source` -> `destination` in the mesh.

        Consul keeps one `service-intentions` entry per destination, so every intention to
        the same destination lands in that one entry (and one custom resource, returned).
        """
        _check_service(source, "intention source", wildcard=True)
        _check_service(destination, "intention destination", wildcard=True)
        if action not in INTENTION_ACTIONS:
            raise ValueError(f"intention action must be allow or deny, got {action!r}")
        sources = self._intentions.setdefault(destination, {})
        if source in sources:
            raise ValueError(f"intention {source} -> {destination} is already declared")
        sources[source] = action
        if destination in self._intention_resources:
            return self._intention_resources[destination]

        def render() -> dict[str, Any]:
            ordered = sorted(sources.items(), key=lambda item: (item[0] == WILDCARD, item[0]))
            return {
                "Kind": "service-intentions",
                "Name": destination,
                "Sources": [{"Name": name, "Action": act} for name, act in ordered],
            }

        construct_id = f"{_pascal(destination)}Intentions"
        self._claim(f"config/service-intentions/{destination}", construct_id)
        resource = self._object(
            construct_id, "ConfigEntry", {"Entry": Lazy.string(_JsonProducer(render))}
        )
        self._intention_resources[destination] = resource
        return resource
