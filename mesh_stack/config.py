"""Typed, validated configuration of the mesh, built once from CDK context.

`app.py` is the only caller: it passes the merged context (cdk.json, then `-c key=value`
overrides, which arrive as strings) to `MeshConfig.from_context`. Every rule raises
`ConfigError` with one line naming the key, the value given and what is allowed; `app.py`
prints that line and exits non-zero, without a traceback.

The README's configuration table is checked against `FIELDS` by a test, so every key a user
can set is documented and no documented key is stale.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from mesh_stack import demo, image_ref, services_config
from mesh_stack.arns import KMS_KEY_ARN, SECRET_ARN
from mesh_stack.config_errors import ConfigError
from mesh_stack.config_errors import fail as _fail
from mesh_stack.image_ref import ENVOY_REPOSITORY, INIT_IMAGE
from mesh_stack.ports import ENVOY_INBOUND_PORTS, fixed_host_port_problem
from mesh_stack.server_image import IMAGE_ID
from mesh_stack.service_ports import ServicePorts
from mesh_stack.services_config import ServiceSpec, TeamService
from mesh_stack.suggest import closest

# Envoy releases each Consul release supports (Consul docs, "Envoy proxy configuration
# reference", Supported Versions; hashicorp/consul envoyextensions/xdscommon/ENVOY_VERSIONS).
# Keys are Consul major.minor; values are the (lowest, highest) Envoy major.minor, inclusive.
# Only rows read from a source are listed: an unlisted Consul release is rejected rather
# than guessed.
ENVOY_SUPPORT: dict[str, tuple[str, str]] = {
    "1.21": ("1.31", "1.34"),
    "2.0": ("1.34", "1.37"),
}

_PREFIX = re.compile(r"^[a-z][a-z0-9-]{1,23}$")
_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_ACCOUNT = re.compile(r"^\d{12}$")
_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_AZ = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$")
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
# Consul datacenter: a DNS label, because server certificates carry `server.<dc>.consul`.
_DATACENTER = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Transit gateway IDs: `tgw-` and 8 (older) or 17 hex digits, like every EC2 resource ID.
_TGW_ID = re.compile(r"^tgw-([0-9a-f]{8}|[0-9a-f]{17})$")

# Network path to on-prem (README "Prerequisites"): `none` leaves it to the operator.
ONPREM_CONNECTIVITY = ("none", "vpn", "transit_gateway")
# ASN of the virtual private gateway's side of the BGP session, set explicitly in the
# template: the default of CreateVpnGateway / AWS::EC2::VPNGateway `AmazonSideAsn`.
AMAZON_SIDE_ASN = 64512
# Customer gateway ASNs. AWS::EC2::CustomerGateway takes `BgpAsn` up to 2,147,483,647 and
# `BgpAsnExtended` from 2,147,483,648 to 4,294,967,294 (its schema's maximum; the Site-to-Site
# VPN guide says 4,294,967,295, which RFC 7300 reserves). AWS reserves some ASNs
# (Site-to-Site VPN User Guide, "Customer gateway options"): region "" means every region.
BGP_ASN_MAX = 4_294_967_294
BGP_ASN_EXTENDED_MIN = 2_147_483_648
RESERVED_ASNS: dict[int, str] = {
    7224: "",
    9059: "eu-west-1",
    10124: "ap-northeast-1",
    17943: "ap-southeast-1",
}


def _as_int(key: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise _fail(key, value, f"must be an integer from {lo} to {hi}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        number = int(value.strip())
    else:
        raise _fail(key, value, f"must be an integer from {lo} to {hi}")
    if not lo <= number <= hi:
        raise _fail(key, value, f"must be an integer from {lo} to {hi}")
    return number


def _as_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _fail(key, value, "must be true or false")


def _as_str(key: str, value: object, pattern: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise _fail(key, value, allowed)
    return value


def _as_image(key: str, value: object, valid: Callable[[str], bool], allowed: str) -> str:
    if not isinstance(value, str) or not valid(value):
        raise _fail(key, value, allowed)
    return value


def _as_list(key: str, value: object) -> list[str]:
    """A list from cdk.json, or from `-c key=a,b` / `-c key='["a","b"]'` on the command line."""
    if isinstance(value, list):
        items: list[object] = list(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as err:
                raise _fail(key, value, f"is not a JSON list ({err.msg})") from None
            if not isinstance(parsed, list):
                raise _fail(key, value, "must be a list")
            items = parsed
        else:
            items = [part.strip() for part in text.split(",") if part.strip()]
    else:
        raise _fail(key, value, "must be a list of strings")
    if not all(isinstance(item, str) for item in items):
        raise _fail(key, value, "must be a list of strings")
    return [str(item) for item in items]


def _version(key: str, value: object) -> tuple[int, int, int]:
    text = _as_str(key, value, _SEMVER, "must be a release version like 1.21.4")
    major, minor, patch = (int(part) for part in text.split("."))
    return major, minor, patch


def _minor(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def _cidrs(key: str, value: object) -> tuple[str, ...]:
    result: list[str] = []
    for item in _as_list(key, value):
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as err:
            raise _fail(key, item, f"is not a valid CIDR ({err})") from None
        if net.prefixlen == 0:
            raise _fail(key, item, "must not open Consul to the whole internet; name your networks")
        if net.version != 4:
            raise _fail(key, item, "must be an IPv4 CIDR (the VPC and NLB are IPv4)")
        if net.prefixlen < 8:
            raise _fail(key, item, "must be /8 or narrower")
        result.append(str(net))
    return tuple(result)


def _vpc_cidr(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise _fail(key, value, "must be a CIDR like 10.40.0.0/16")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        raise _fail(key, value, f"is not a valid CIDR ({err})") from None
    if net.version != 4 or not 16 <= net.prefixlen <= 24 or not net.is_private:
        raise _fail(key, value, "must be a private IPv4 CIDR from /16 to /24")
    return str(net)


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _fail(key, value, "must be one of " + ", ".join(allowed))
    return value


def _public_ipv4(key: str, value: object) -> str:
    if value in ("", None):
        return ""
    allowed = "must be the public IPv4 address of the on-prem VPN device (or of its NAT)"
    if not isinstance(value, str):
        raise _fail(key, value, allowed)
    try:
        address = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise _fail(key, value, allowed) from None
    # is_global excludes RFC 1918, shared (100.64/10), loopback, link-local, documentation and
    # reserved ranges; multicast addresses count as global but can never be a tunnel endpoint.
    if not address.is_global or address.is_multicast:
        raise _fail(key, value, allowed + "; private and reserved addresses are refused")
    return str(address)


def _bgp_asn(key: str, value: object) -> int | None:
    if value in ("", None):
        return None
    asn = _as_int(key, value, 1, BGP_ASN_MAX)
    if RESERVED_ASNS.get(asn) == "":
        raise _fail(key, value, "is reserved by AWS in every region")
    return asn


# Lambda keeps this much of the account's concurrency unreserved: "You can reserve up to the
# Unreserved account concurrency value minus 100" (Lambda Developer Guide,
# configuration-concurrency). Unreserved = the "Concurrent executions" quota minus what other
# functions already reserve (GetAccountSettings AccountLimit.UnreservedConcurrentExecutions:
# "minus the capacity that's reserved for individual functions with PutFunctionConcurrency",
# botocore's Lambda model). New accounts may start with a quota of 10 or 50, where any
# reservation fails ("... decreases account's UnreservedConcurrentExecution below its minimum
# value").
LAMBDA_UNRESERVED_MINIMUM = 100
# Reserved besides the registrar's MaximumConcurrency: 2 for the registrar's headroom, 1 for the
# reconcile pass (mesh_stack/registrar.py, mesh_stack/reconcile.py).
RESERVED_BESIDES_REGISTRAR = 3


def _optional(pattern: re.Pattern[str], allowed: str) -> Callable[[str, object], str]:
    """A string key whose empty value means "not set"."""
    return lambda k, v: "" if v in ("", None) else _as_str(k, v, pattern, allowed)


def _optional_bool(key: str, value: object) -> bool | None:
    return None if value in ("", None) else _as_bool(key, value)


def _server_count(key: str, value: object) -> int:
    number = _as_int(key, value, 1, 99)
    if number not in (3, 5):
        raise _fail(key, value, "must be 3 or 5 (an odd quorum; 1 has no fault tolerance)")
    return number


@dataclass(frozen=True)
class Field:
    """One configuration key: its default, its README description and its parser."""

    default: Any
    doc: str
    parse: Callable[[str, object], Any]


FIELDS: dict[str, Field] = {
    "prefix": Field(
        "consul-mesh",
        "Name prefix of the stack and its resources (lowercase, digits, dashes; 2-24 chars).",
        lambda k, v: _as_str(k, v, _PREFIX, "must match [a-z][a-z0-9-]{1,23}"),
    ),
    "environment": Field(
        "dev",
        "Environment name appended to the stack name, e.g. `dev`, `prod` (1-12 chars).",
        lambda k, v: _as_str(k, v, _ENVIRONMENT, "must match [a-z][a-z0-9]{0,11}"),
    ),
    "region": Field(
        "us-east-1",
        "AWS region to deploy to. The account comes from the CLI's credentials at deploy time.",
        lambda k, v: _as_str(k, v, _REGION, "must be an AWS region name like eu-west-1"),
    ),
    "account": Field(
        "",
        "AWS account ID; only needed with `vpc_id` (VPC lookup). Empty = resolved at deploy.",
        lambda k, v: "" if v in ("", None) else _as_str(k, v, _ACCOUNT, "must be 12 digits"),
    ),
    "vpc_id": Field(
        "",
        "Existing VPC to use instead of creating one (needs `account` and a committed "
        "`cdk.context.json` from `cdk synth` with credentials). Empty = create a VPC.",
        lambda k, v: (
            "" if v in ("", None) else _as_str(k, v, _VPC_ID, "must look like vpc-0abc1234")
        ),
    ),
    "vpc_cidr": Field(
        "10.40.0.0/16",
        "CIDR of the VPC created when `vpc_id` is empty (/16 to /24).",
        _vpc_cidr,
    ),
    "az_count": Field(
        3,
        "Availability zones of the created VPC (2-3); 5 servers need 3.",
        lambda k, v: _as_int(k, v, 2, 3),
    ),
    "availability_zones": Field(
        [],
        "Explicit AZ names; empty = `<region>a`, `<region>b`, ... up to `az_count`.",
        lambda k, v: tuple(
            _as_str(k, az, _AZ, "must be AZ names like us-east-1a") for az in _as_list(k, v)
        ),
    ),
    "consul_version": Field(
        "1.21.4",
        "Consul release installed on the servers (verified against HashiCorp's SHA256SUMS). "
        "Supported: " + ", ".join(f"{c}.x" for c in ENVOY_SUPPORT) + ".",
        lambda k, v: _as_str(k, v, _SEMVER, "must be a release version like 1.21.4"),
    ),
    "envoy_version": Field(
        "1.34.14",
        "Envoy release of the sidecars; must be in the range the Consul release supports.",
        lambda k, v: _as_str(k, v, _SEMVER, "must be a release version like 1.34.14"),
    ),
    "envoy_image": Field(
        ENVOY_REPOSITORY,
        "Repository the sidecars pull Envoy from, without a tag (the tag is "
        "`v<envoy_version>`): Docker Hub by default, or your registry or mirror, e.g. "
        "`registry.example.com/mirror/envoyproxy/envoy`. In Amazon ECR (a pull-through cache "
        "too), the execution roles may pull, import upstream and create the cache repository, "
        "on that repository only.",
        lambda k, v: _as_image(
            k,
            v,
            image_ref.is_repository,
            "must be an image repository without a tag, like envoyproxy/envoy or "
            "registry.example.com/envoyproxy/envoy (the tag is v<envoy_version>)",
        ),
    ),
    "init_image": Field(
        INIT_IMAGE,
        "Image of the sidecars' init container (any image with `python3` 3.11 or newer on its "
        "PATH; it runs a stdlib-only program as `python3 -c` and as root, whatever the image's "
        "ENTRYPOINT and USER), with a tag or `@sha256:` digest.",
        lambda k, v: _as_image(
            k,
            v,
            image_ref.is_pinned_reference,
            "must be an image reference with a tag or @sha256 digest, like "
            "public.ecr.aws/docker/library/python:3.13-slim",
        ),
    ),
    "registry_credentials_secret_arn": Field(
        "",
        'Complete ARN of a Secrets Manager secret `{"username": ..., "password": ...}` '
        "that ECS uses (`repositoryCredentials`) to pull `envoy_image` and `init_image` from a "
        "private registry or an authenticated Docker Hub account; the task execution roles may "
        "read exactly this secret. Not for images on public.ecr.aws or in Amazon ECR; the "
        "images it is used for must be on one registry. Empty = anonymous pulls.",
        _optional(SECRET_ARN, "must be a complete Secrets Manager secret ARN (with its suffix)"),
    ),
    "registry_credentials_kms_key_arn": Field(
        "",
        "ARN of the customer-managed KMS key that encrypts `registry_credentials_secret_arn`; "
        "the execution roles may decrypt with it through Secrets Manager only (a multi-Region "
        "`mrk-` key too). A secret in another account needs one, plus that account's secret "
        "and key policies for the execution roles (Secrets Manager refuses other accounts "
        "the AWS managed key). Empty = the "
        "secret uses the AWS managed key.",
        _optional(KMS_KEY_ARN, "must be a KMS key ARN like arn:aws:kms:<region>:<acct>:key/<id>"),
    ),
    "consul_esm_version": Field(
        "0.10.0",
        "consul-esm release run on the servers to health-check catalog entries (verified).",
        lambda k, v: _as_str(k, v, _SEMVER, "must be a release version like 0.10.0"),
    ),
    "datacenter": Field(
        "dc1",
        "Consul datacenter name: a DNS label (server certificates carry server.<dc>.consul).",
        lambda k, v: _as_str(k, v, _DATACENTER, "must be a DNS label like dc1 (a-z, 0-9, -)"),
    ),
    "server_count": Field(
        3,
        "Consul servers (Raft voters): 3 tolerates one failure, 5 tolerates two.",
        _server_count,
    ),
    "instance_type": Field(
        "m7g.large",
        "EC2 instance type of the servers; Graviton (`*g*` families) installs the arm64 build.",
        lambda k, v: _as_str(k, v, _INSTANCE_TYPE, "must be an EC2 instance type like m7g.large"),
    ),
    "server_ami": Field(
        "",
        "AMI of the Consul servers. Empty = the Amazon Linux 2023 image recorded for `region` "
        "and the instance type's architecture in `server-ami.json` (`make refresh-ami`, which "
        "needs credentials, updates it); a new image replaces the servers one at a time.",
        lambda k, v: (
            ""
            if v in ("", None)
            else _as_str(k, v, IMAGE_ID, "must be an AMI ID like ami-0123456789abcdef0")
        ),
    ),
    "onprem_cidrs": Field(
        ["192.168.0.0/16"],
        "On-prem networks of the ECS Anywhere hosts: they may reach Consul on 8501/8503, and "
        "the servers may reach their Envoy listeners on TCP "
        f"{ENVOY_INBOUND_PORTS[0]}-{ENVOY_INBOUND_PORTS[1]}. 0.0.0.0/0 and networks wider "
        "than /8 are rejected.",
        _cidrs,
    ),
    "operator_cidrs": Field(
        [],
        "Networks of the operators' workstations or bastions: they may reach the Consul UI and "
        "HTTPS API (TCP 8501) through the load balancer, nothing else. Same rules as "
        "`onprem_cidrs`. Empty = only `onprem_cidrs` reach it.",
        _cidrs,
    ),
    "onprem_connectivity": Field(
        "none",
        "Network path from the VPC's private subnets to `onprem_cidrs`: `none` (already routed, "
        "or provided by you), `vpn` (Site-to-Site VPN) or `transit_gateway` (attach to an "
        "existing one). Must be `none` with `vpc_id`. See Prerequisites.",
        lambda k, v: _choice(k, v, ONPREM_CONNECTIVITY),
    ),
    "vpn_customer_gateway_ip": Field(
        "",
        "Public IPv4 of the on-prem VPN device; required with `onprem_connectivity=vpn`.",
        _public_ipv4,
    ),
    "vpn_bgp_asn": Field(
        None,
        "BGP ASN of the on-prem VPN device (`vpn` only; 1-4294967294, not an AWS-reserved ASN "
        f"nor the VPN gateway's {AMAZON_SIDE_ASN}). Empty = static routes for `onprem_cidrs`.",
        _bgp_asn,
    ),
    "transit_gateway_id": Field(
        "",
        "Existing transit gateway the private subnets attach to; required with "
        "`onprem_connectivity=transit_gateway` (`tgw-` and 8 or 17 hex digits).",
        lambda k, v: (
            "" if v in ("", None) else _as_str(k, v, _TGW_ID, "must look like tgw-0abc1234")
        ),
    ),
    "plaintext_listeners": Field(
        False,
        "Also open plaintext HTTP 8500 and gRPC 8502 (off by default; TLS 8501/8503 always on).",
        _as_bool,
    ),
    "registrar_concurrency": Field(
        5,
        "SQS event source MaximumConcurrency of the registrar (2-1000): bounds load on Consul.",
        lambda k, v: _as_int(k, v, 2, 1000),
    ),
    "reserve_concurrency": Field(
        False,
        "Reserve Lambda concurrency: `registrar_concurrency` + 2 for the registrar, 1 for the "
        "reconcile pass. Off by default: Lambda keeps 100 of the account's concurrency "
        "unreserved, other functions' reservations count against it too, and new accounts' "
        "quotas allow no reservation at all.",
        _as_bool,
    ),
    "lambda_unreserved_concurrency": Field(
        1000,
        "The account's unreserved Lambda concurrency in the region: the \"Concurrent "
        'executions" quota minus what other functions already reserve (`aws lambda '
        "get-account-settings`, AccountLimit.UnreservedConcurrentExecutions; 1000 on a fresh "
        "account with AWS's default quota). Only with `reserve_concurrency`, which may reserve "
        "at most this minus 100.",
        lambda k, v: _as_int(k, v, 1, 10_000_000),
    ),
    "reconcile_interval_minutes": Field(
        5,
        "Minutes between reconcile passes that repair drift (1-1440).",
        lambda k, v: _as_int(k, v, 1, 1440),
    ),
    "reconcile_max_deletions": Field(
        50,
        "Most catalog entries one reconcile pass may delete (1-10000); the rest wait.",
        lambda k, v: _as_int(k, v, 1, 10000),
    ),
    "host_disconnect_grace_minutes": Field(
        5,
        "Minutes an ECS agent may stay disconnected before its host's tasks are marked "
        "critical (1-1440); agents reconnect several times an hour as normal operation.",
        lambda k, v: _as_int(k, v, 1, 1440),
    ),
    "drain_on_delete": Field(
        True,
        "Deleting the stack removes every catalog entry the registrar owns.",
        _as_bool,
    ),
    "activation_registration_limit": Field(
        10,
        "How many ECS Anywhere hosts the SSM activation may register (1-1000).",
        lambda k, v: _as_int(k, v, 1, 1000),
    ),
    "activation_expiry_days": Field(
        7,
        "Days until the SSM activation expires (1-30; SSM allows at most 30).",
        lambda k, v: _as_int(k, v, 1, 30),
    ),
    "demo_enabled": Field(
        None,
        "Deploy the `frontend` -> `backend` demo: two built-in `services` entries. Empty = on "
        "only with `environment=dev`; set `true` to deploy it in another environment.",
        _optional_bool,
    ),
    "services": Field(
        {},
        "Mesh services to run, as a JSON object `{name: settings}` (image, port, app_user, "
        "upstreams, allow_from, ...; docs/services.md). Each gets its task definition, ECS "
        "service, Consul token and intentions.",
        services_config.parse_services,
    ),
    "external_services": Field(
        [],
        "Consul services registered by other means, which `upstreams` and `allow_from` may name.",
        services_config.parse_external,
    ),
    "team_services": Field(
        {},
        "Services that teams deploy from their own CDK app (`{name: {allow_from: [...]}}`): "
        "this stack owns their Consul tokens and intentions (docs/services.md).",
        services_config.parse_team,
    ),
    "prometheus_port": Field(
        9102,
        "Port of the demo backend's Envoy Prometheus listener on 127.0.0.1 of each host "
        "(serves /stats/prometheus only); frontend's is the next one (1024-65534, outside "
        "20000-20999, 32768-60999 and the ECS-reserved 2375/2376).",
        lambda k, v: _as_int(k, v, 1024, 65534),
    ),
    "snapshot_interval_hours": Field(
        1,
        "Hours between `consul snapshot save` runs to S3 (1-24).",
        lambda k, v: _as_int(k, v, 1, 24),
    ),
    "snapshot_retention_days": Field(
        30,
        "Days snapshots are kept in S3 (1-3650).",
        lambda k, v: _as_int(k, v, 1, 3650),
    ),
    "consul_objects_generation": Field(
        0,
        "Bump (0, 1, 2, ...) to re-apply every Consul ACL policy, token and config entry the "
        "stack declares at the next deploy: after restoring a snapshot older than them, or to "
        "mint new SecretIDs for tokens deleted in Consul (docs/operations.md). 0-1000000.",
        lambda k, v: _as_int(k, v, 0, 1_000_000),
    ),
    "alarm_email": Field(
        "",
        "E-mail subscribed to the alarm topic; empty = subscribe later.",
        lambda k, v: "" if v in ("", None) else _as_str(k, v, _EMAIL, "must be an e-mail address"),
    ),
}


@dataclass(frozen=True)
class MeshConfig:
    """The validated configuration. Build it with `from_context`."""

    prefix: str
    environment: str
    region: str
    account: str
    vpc_id: str
    vpc_cidr: str
    az_count: int
    availability_zones: tuple[str, ...]
    consul_version: str
    envoy_version: str
    envoy_image: str
    init_image: str
    registry_credentials_secret_arn: str
    registry_credentials_kms_key_arn: str
    consul_esm_version: str
    datacenter: str
    server_count: int
    instance_type: str
    server_ami: str
    onprem_cidrs: tuple[str, ...]
    operator_cidrs: tuple[str, ...]
    onprem_connectivity: str
    vpn_customer_gateway_ip: str
    vpn_bgp_asn: int | None
    transit_gateway_id: str
    plaintext_listeners: bool
    registrar_concurrency: int
    reserve_concurrency: bool
    lambda_unreserved_concurrency: int
    reconcile_interval_minutes: int
    reconcile_max_deletions: int
    host_disconnect_grace_minutes: int
    drain_on_delete: bool
    activation_registration_limit: int
    activation_expiry_days: int
    demo_enabled: bool
    services: tuple[ServiceSpec, ...]
    external_services: tuple[str, ...]
    team_services: tuple[TeamService, ...]
    prometheus_port: int
    snapshot_interval_hours: int
    snapshot_retention_days: int
    consul_objects_generation: int
    alarm_email: str

    @property
    def stack_name(self) -> str:
        return f"{self.prefix}-{self.environment}"

    @property
    def arm64(self) -> bool:
        """Graviton families carry a `g` after the generation digit (m7g, c7gn, t4g)."""
        family = self.instance_type.split(".", 1)[0]
        return bool(re.match(r"^[a-z]+\d+g", family))

    @property
    def zones(self) -> tuple[str, ...]:
        if self.availability_zones:
            return self.availability_zones
        return tuple(f"{self.region}{letter}" for letter in "abc"[: self.az_count])

    @cached_property
    def demo_services(self) -> tuple[ServiceSpec, ...]:
        """The demo's two services (none with `demo_enabled=false`): `services` entries."""
        if not self.demo_enabled:
            return ()
        return services_config.parse_services("demo", demo.demo_services(self.prometheus_port))

    @cached_property
    def service_ports(self) -> dict[str, ServicePorts]:
        """The ports of every mesh service (demo and `services`), chosen where unset."""
        return services_config.plan_ports([*self.demo_services, *self.services])

    @classmethod
    def from_context(cls, context: Mapping[str, object]) -> MeshConfig:
        """Validate `context` into a config.

        Keys outside FIELDS are left to CDK and other tools, except one that looks like a typo
        of ours (`check_unknown_keys`), which would otherwise be silently ignored.
        """
        check_unknown_keys(context)
        values = {
            key: spec.parse(key, context.get(key, spec.default)) for key, spec in FIELDS.items()
        }
        if values["demo_enabled"] is None:
            # The demo shows a working mesh on a first deploy; elsewhere it is an opt-in.
            values["demo_enabled"] = values["environment"] == "dev"
        config = cls(**values)
        config._check_combinations()
        if "lambda_unreserved_concurrency" in context and not config.reserve_concurrency:
            raise _fail(
                "lambda_unreserved_concurrency",
                context["lambda_unreserved_concurrency"],
                "is only used with reserve_concurrency=true (nothing is reserved otherwise)",
            )
        return config

    def _check_combinations(self) -> None:
        consul = self.consul_version.rsplit(".", 1)[0]
        if consul not in ENVOY_SUPPORT:
            raise _fail(
                "consul_version",
                self.consul_version,
                "supported releases are " + ", ".join(f"{c}.x" for c in ENVOY_SUPPORT),
            )
        low, high = ENVOY_SUPPORT[consul]
        envoy = _minor(self.envoy_version.rsplit(".", 1)[0])
        if not _minor(low) <= envoy <= _minor(high):
            raise _fail(
                "envoy_version",
                self.envoy_version,
                f"Consul {consul}.x supports Envoy {low}.x to {high}.x",
            )
        if self.vpc_id and not self.account:
            raise _fail("vpc_id", self.vpc_id, "an existing VPC needs `account` set (VPC lookup)")
        self._check_onprem_path()
        self._check_images()
        if self.availability_zones:
            if len(self.availability_zones) != len(set(self.availability_zones)):
                raise _fail("availability_zones", list(self.availability_zones), "has duplicates")
            wrong = [az for az in self.availability_zones if not az.startswith(self.region)]
            if wrong:
                raise _fail("availability_zones", wrong, f"must be zones of region {self.region}")
        # The demo runs in host mode: its two metrics listeners (prometheus_port and the next
        # port) share each host's ports with its apps, upstream and Envoy listeners.
        first, last = ENVOY_INBOUND_PORTS
        taken = demo.app_ports() if self.demo_enabled else {}
        for port in (self.prometheus_port, self.prometheus_port + 1):
            problem = fixed_host_port_problem(port)
            if problem:
                raise _fail(
                    "prometheus_port",
                    self.prometheus_port,
                    f"the demo's metrics listeners would use {problem}",
                )
            if port in taken or first <= port <= last:
                used = taken.get(port, f"Envoy's public and health listeners ({first}-{last})")
                raise _fail(
                    "prometheus_port",
                    self.prometheus_port,
                    f"the demo's metrics listeners would use {port}, taken by {used}; "
                    "pick another port",
                )
        if self.reserve_concurrency:
            reserved = self.registrar_concurrency + RESERVED_BESIDES_REGISTRAR
            allowed = self.lambda_unreserved_concurrency - LAMBDA_UNRESERVED_MINIMUM
            if reserved > allowed:
                raise _fail(
                    "registrar_concurrency",
                    self.registrar_concurrency,
                    f"with reserve_concurrency it reserves {reserved} (registrar_concurrency + 2 "
                    "for the registrar, 1 for the reconcile pass), but the account can reserve "
                    f"at most {max(allowed, 0)}: its unreserved concurrency "
                    f"(lambda_unreserved_concurrency={self.lambda_unreserved_concurrency}: the "
                    'Lambda "Concurrent executions" quota minus what other functions already '
                    "reserve; `aws lambda get-account-settings` shows it as "
                    "AccountLimit.UnreservedConcurrentExecutions) minus the "
                    f"{LAMBDA_UNRESERVED_MINIMUM} Lambda keeps unreserved. Lower "
                    "registrar_concurrency, free or raise concurrency, or turn "
                    "reserve_concurrency off",
                )
        zones = len(self.zones)
        # At most 2 servers per AZ: losing one AZ must never take a quorum with it.
        if self.server_count > 2 * zones or (self.server_count == 5 and zones < 3):
            raise _fail(
                "server_count",
                self.server_count,
                f"needs at least 3 availability zones (at most 2 servers per AZ); have {zones}",
            )
        self._check_services()

    def _check_services(self) -> None:
        """Names and references across services, and every service's ports."""
        services_config.check_references(
            self.services, self.team_services, self.external_services, self.demo_services
        )
        _ = self.service_ports
        # Parameter Store refuses names that start with "aws" or "ssm" (case-insensitive)
        # (SSM API reference, PutParameter `Name`); the stack publishes /<prefix>/... there.
        if self.prefix.lower().startswith(("aws", "ssm")):
            raise _fail(
                "prefix",
                self.prefix,
                "must not start with aws or ssm: the SSM parameters under /<prefix>/ would be "
                "refused",
            )

    def _check_images(self) -> None:
        key_arn = self.registry_credentials_kms_key_arn
        if key_arn and not self.registry_credentials_secret_arn:
            raise _fail(
                "registry_credentials_kms_key_arn",
                key_arn,
                "is used only with registry_credentials_secret_arn (the key of that secret)",
            )
        hosts = sorted({image_ref.registry_host(image) for image in self.images_with_credentials})
        if len(hosts) > 1:
            # Every container's repositoryCredentials name this one secret: a registry's
            # login sent to another registry fails the pull an anonymous pull would pass.
            raise _fail(
                "registry_credentials_secret_arn",
                self.registry_credentials_secret_arn,
                f"would be sent to two registries, {hosts[0]} and {hosts[1]} (envoy_image "
                "and init_image): one login cannot hold for both; put both images on one "
                "registry, or one of them in Amazon ECR or on public.ecr.aws",
            )
        if self.registry_credentials_secret_arn and not self.images_with_credentials:
            raise _fail(
                "registry_credentials_secret_arn",
                self.registry_credentials_secret_arn,
                "no image would use it: envoy_image and init_image are both on public.ecr.aws "
                "or in Amazon ECR (pulled without registry credentials); set either to your "
                "registry first",
            )

    @property
    def images_with_credentials(self) -> tuple[str, ...]:
        """The sidecar images pulled with `registry_credentials_secret_arn`, when it is set.

        ECS private registry authentication is for registries outside AWS; images in Amazon
        ECR are pulled with the execution role (ECS developer guide, "Private registry
        authentication for tasks"), and ECR Public allows anonymous pulls.
        """
        if not self.registry_credentials_secret_arn:
            return ()
        return tuple(
            configured
            for configured, reference in (
                (self.envoy_image, f"{self.envoy_image}:v{self.envoy_version}"),
                (self.init_image, self.init_image),
            )
            if image_ref.pulled_with_credentials(image_ref.parse(reference))
        )

    def _check_onprem_path(self) -> None:
        mode = self.onprem_connectivity
        if self.vpc_id and mode != "none":
            raise _fail(
                "onprem_connectivity",
                mode,
                f"must be none with vpc_id {self.vpc_id}: an existing VPC is assumed to be "
                "routed to on-prem already",
            )
        used_by = {
            "vpn_customer_gateway_ip": ("vpn", self.vpn_customer_gateway_ip),
            "vpn_bgp_asn": ("vpn", self.vpn_bgp_asn),
            "transit_gateway_id": ("transit_gateway", self.transit_gateway_id),
        }
        for key, (owner, value) in used_by.items():
            if value not in ("", None) and mode != owner:
                raise _fail(key, value, f"is used only with onprem_connectivity={owner}")
        if mode == "vpn" and not self.vpn_customer_gateway_ip:
            raise _fail(
                "vpn_customer_gateway_ip",
                self.vpn_customer_gateway_ip,
                "is required with onprem_connectivity=vpn (the on-prem VPN device's public IPv4)",
            )
        if mode == "transit_gateway" and not self.transit_gateway_id:
            raise _fail(
                "transit_gateway_id",
                self.transit_gateway_id,
                "is required with onprem_connectivity=transit_gateway",
            )
        asn = self.vpn_bgp_asn
        if asn == AMAZON_SIDE_ASN:
            raise _fail(
                "vpn_bgp_asn",
                asn,
                f"must differ from the VPN gateway's Amazon side ASN {AMAZON_SIDE_ASN}",
            )
        if asn is not None and RESERVED_ASNS.get(asn) == self.region:
            raise _fail("vpn_bgp_asn", asn, f"is reserved by AWS in {self.region}")
        if mode != "none":
            vpc = ipaddress.ip_network(self.vpc_cidr)
            for cidr in self.onprem_cidrs:
                if ipaddress.ip_network(cidr).overlaps(vpc):
                    raise _fail(
                        "onprem_cidrs",
                        cidr,
                        f"overlaps vpc_cidr {self.vpc_cidr}: on-prem and the VPC must not "
                        "share addresses to be routed to each other",
                    )
            vpc4 = ipaddress.IPv4Network(self.vpc_cidr)  # IPv4 only, like every CIDR key
            for cidr in self.operator_cidrs:
                network = ipaddress.IPv4Network(cidr)
                # Inside the VPC (a bastion subnet) needs no route; across its edge cannot be
                # routed: the VPC's local route wins for the addresses inside it.
                if network.overlaps(vpc4) and not network.subnet_of(vpc4):
                    raise _fail(
                        "operator_cidrs",
                        cidr,
                        f"overlaps vpc_cidr {self.vpc_cidr} without lying inside it: give the "
                        "operator network either inside the VPC or outside it",
                    )


# Context keys of CDK itself that have no `@`/`:` namespace: written into cdk.json by
# `cdk acknowledge` and `cdk cli-telemetry` (aws-cdk CLI, node_modules/aws-cdk/lib/index.js:
# context.set("acknowledged-issue-numbers"), context.set("cli-telemetry")). Every other key
# CDK sets is namespaced: `@aws-cdk/...` feature flags, `aws:cdk:...` toolkit settings and
# `<provider>:account=...` lookups in cdk.context.json.
CDK_KEYS = ("acknowledged-issue-numbers", "cli-telemetry")


def check_unknown_keys(context: Mapping[str, object]) -> None:
    """Refuse a context key that is not ours but close to one of ours ("did you mean")."""
    for key in context:
        if key in FIELDS or key in CDK_KEYS or key.startswith("@") or ":" in key:
            continue
        guess = closest(key, FIELDS)
        if guess is not None:
            # The value is not echoed: a misspelled `services` may carry anything.
            raise ConfigError(f"unknown context key {key!r}: did you mean {guess}?")
