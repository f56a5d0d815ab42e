"""AWS lookups and the production wiring: moto for ECS and Secrets Manager, a botocore Stubber
for SSM DescribeInstanceInformation (moto 5.2.5 does not implement it)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws
import boto3
import handler
import kv_layout
import pytest
import registrar
import retry
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from ecs_fake import INSTANCE_ID, FakeEcs
from moto import mock_aws
from registrar_fixtures import (
    CLUSTER_ARN,
    HOST_IP,
    INSTANCE_ARN,
    REGION,
    FakeSsm,
    LambdaContext,
    MotoWorld,
    build_moto_world,
    failed_ids,
    moto_runtime,
    sqs_event,
    task_event,
)

from tests.consul_double import ConsulDouble


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoWorld]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        aws.reset_clients()
        yield build_moto_world()
    aws.reset_clients()
    registrar.set_runtime(None)


class CountingClient:
    """Wraps a boto3 client and counts the calls of each operation."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(**kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(**kwargs)

        return call


def _event(
    world: MotoWorld, template: str = "task_running_bridge.json", **kw: Any
) -> dict[str, Any]:
    return task_event(
        template,
        cluster_arn=world.cluster_arn,
        container_instance_arn=world.container_instance_arn,
        task_definition_arn=world.task_definition_arns["web"],
        **kw,
    )


# --------------------------------------------------------------------------------------------
# Task definitions


def test_a_request_that_outlasts_the_budget_is_abandoned_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a request that hangs past its timeouts: urllib3 (2.x util/connection.py
    # create_connection) tries every address DNS returns with the connect timeout each, so a
    # host with blackholed addresses costs connect_timeout times their number
    monkeypatch.setattr(aws, "ATTEMPT_S", 0.1)
    released = threading.Event()

    def hangs() -> str:
        released.wait(10)
        return "answer"

    # WHEN it runs with 0.5 s of budget left
    start = time.monotonic()
    try:
        with aws.within(retry.Budget.fixed(0.5)), pytest.raises(retry.BudgetExhausted):
            aws.aws_call("DescribeContainerInstances", hangs)
        waited = time.monotonic() - start
    finally:
        released.set()

    # THEN the caller gets BudgetExhausted when the budget ends, not when the request does
    assert waited < 5


def test_a_request_inside_a_budget_maps_its_errors_as_before() -> None:
    # GIVEN a call AWS refuses (as botocore raises it)
    def refused() -> None:
        raise ClientError(
            {"Error": {"Code": "ClientException", "Message": "Unable to describe"}},
            "DescribeTaskDefinition",
        )

    # WHEN it runs inside a budget, THEN the caller sees the lookup error with AWS's code
    with aws.within(retry.Budget.fixed(30)), pytest.raises(aws.AwsLookupError) as caught:
        aws.aws_call("DescribeTaskDefinition", refused)
    assert caught.value.code == "ClientException"


def test_task_definitions_are_read_once_per_arn(world: MotoWorld) -> None:
    ecs = CountingClient(boto3.client("ecs", region_name=REGION))
    source = aws.EcsTaskDefinitions(lambda: ecs)

    first = source.get(world.task_definition_arns["web"])
    again = source.get(world.task_definition_arns["web"])
    api = source.get(world.task_definition_arns["api"])

    assert first is again
    assert ecs.calls == {"describe_task_definition": 2}
    assert first.network_mode == "bridge"
    web = first.container("web")
    assert web is not None
    assert web.opted_in
    assert web.labels["consul-mesh.upstreams"] == "backend:9001,db:9002"
    assert api.network_mode == "host"


def test_unknown_task_definition_is_a_lookup_error(world: MotoWorld) -> None:
    source = aws.EcsTaskDefinitions(lambda: boto3.client("ecs", region_name=REGION))
    missing = world.task_definition_arns["web"].replace("web:1", "nope:9")

    with pytest.raises(aws.AwsLookupError, match=r"DescribeTaskDefinition .*nope:9"):
        source.get(missing)


# --------------------------------------------------------------------------------------------
# Host addresses


def test_host_address_comes_from_ssm_and_is_cached_for_its_ttl(world: MotoWorld) -> None:
    ecs = CountingClient(boto3.client("ecs", region_name=REGION))
    now = [1000.0]
    hosts = aws.EcsSsmHosts(lambda: ecs, lambda: world.ssm, ttl_s=300, clock=lambda: now[0])

    first = hosts.get(world.cluster_arn, world.container_instance_arn)
    now[0] += 299
    cached = hosts.get(world.cluster_arn, world.container_instance_arn)
    world.ssm.ip_by_instance[world.instance_id] = "10.1.1.1"
    now[0] += 2
    refreshed = hosts.get(world.cluster_arn, world.container_instance_arn)

    assert (first.address, first.source, first.instance_id) == (HOST_IP, "ssm", world.instance_id)
    assert cached == first
    assert refreshed.address == "10.1.1.1"
    assert ecs.calls == {"describe_container_instances": 2}
    assert world.ssm.calls == 2


def test_container_instance_attribute_overrides_the_ssm_address(world: MotoWorld) -> None:
    ecs = boto3.client("ecs", region_name=REGION)
    ecs.put_attributes(
        cluster=world.cluster_arn,
        attributes=[
            {
                "name": "consul-mesh.address",
                "value": "192.168.50.7",
                "targetId": world.container_instance_arn,
            }
        ],
    )
    hosts = aws.EcsSsmHosts(lambda: ecs, lambda: world.ssm, ttl_s=300)

    host = hosts.get(world.cluster_arn, world.container_instance_arn)

    assert (host.address, host.source) == ("192.168.50.7", "attribute")
    assert world.ssm.calls == 0


def test_fails_when_the_address_attribute_is_not_an_ip(world: MotoWorld) -> None:
    ecs = boto3.client("ecs", region_name=REGION)
    ecs.put_attributes(
        cluster=world.cluster_arn,
        attributes=[
            {
                "name": "consul-mesh.address",
                "value": "host.example",
                "targetId": world.container_instance_arn,
            }
        ],
    )
    hosts = aws.EcsSsmHosts(lambda: ecs, lambda: world.ssm, ttl_s=300)

    with pytest.raises(aws.AwsLookupError, match=r"consul-mesh.address .* got 'host.example'"):
        hosts.get(world.cluster_arn, world.container_instance_arn)


def test_fails_when_ssm_does_not_know_the_instance(world: MotoWorld) -> None:
    world.ssm.ip_by_instance.clear()
    hosts = aws.EcsSsmHosts(
        lambda: boto3.client("ecs", region_name=REGION), lambda: world.ssm, ttl_s=300
    )

    with pytest.raises(aws.AwsLookupError, match="SSM reports no IP address"):
        hosts.get(world.cluster_arn, world.container_instance_arn)


@pytest.mark.parametrize(
    ("address", "doubt"),
    [
        ("172.18.0.1", "172.18.0.0/15"),
        ("172.31.255.1", "172.28.0.0/14"),
        ("::ffff:172.20.0.1", "172.20.0.0/14"),
        ("172.16.0.1", None),
        ("192.168.50.7", None),
        ("10.0.0.5", None),
    ],
)
def test_an_ssm_address_in_a_docker_bridge_pool_is_kept_but_doubted(
    world: MotoWorld, address: str, doubt: str | None
) -> None:
    # GIVEN SSM reports an address that may be a user-defined Docker bridge's (moby
    # libnetwork/ipamutils localScopeDefaultNetworks) or the host's own
    world.ssm.ip_by_instance[world.instance_id] = address
    hosts = aws.EcsSsmHosts(
        lambda: boto3.client("ecs", region_name=REGION), lambda: world.ssm, ttl_s=300
    )

    # WHEN the host is looked up, THEN the address is used, and doubted only in Docker's pools
    host = hosts.get(world.cluster_arn, world.container_instance_arn)
    assert host.address == address
    if doubt is None:
        assert host.doubt is None
    else:
        assert host.doubt is not None
        assert doubt in host.doubt


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("172.17.0.1", r"Docker's default bridge network 172.17.0.0/16 \(docker0\)"),
        ("127.0.0.1", "a loopback address"),
        ("169.254.12.7", "a link-local address"),
        ("0.0.0.0", "an unspecified address"),
        ("fe80::1", "a link-local address"),
        ("::ffff:127.0.0.1", "a loopback address"),
    ],
)
def test_an_unreachable_ssm_address_is_refused_and_names_the_way_out(
    world: MotoWorld, address: str, why: str
) -> None:
    # GIVEN SSM reports an address no other host can reach (the SSM agent reports the first
    # interface, which can be docker0: aws/amazon-ssm-agent#553)
    world.ssm.ip_by_instance[world.instance_id] = address
    hosts = aws.EcsSsmHosts(
        lambda: boto3.client("ecs", region_name=REGION), lambda: world.ssm, ttl_s=300
    )

    # WHEN the host is looked up, THEN it is refused with the instance and the attribute named
    with pytest.raises(aws.UnusableHostAddress, match=why) as refused:
        hosts.get(world.cluster_arn, world.container_instance_arn)
    message = str(refused.value)
    assert world.container_instance_arn in message
    assert "consul-mesh.address" in message
    assert refused.value.container_instance_arn == world.container_instance_arn


def test_the_address_attribute_may_be_in_172_17_but_never_loopback(world: MotoWorld) -> None:
    ecs = boto3.client("ecs", region_name=REGION)
    hosts = aws.EcsSsmHosts(lambda: ecs, lambda: world.ssm, ttl_s=0)

    def set_attribute(value: str) -> None:
        ecs.put_attributes(
            cluster=world.cluster_arn,
            attributes=[
                {
                    "name": "consul-mesh.address",
                    "value": value,
                    "targetId": world.container_instance_arn,
                }
            ],
        )

    # An operator whose hosts really are numbered in 172.17.0.0/16 says so with the attribute
    set_attribute("172.17.8.9")
    assert hosts.get(world.cluster_arn, world.container_instance_arn).address == "172.17.8.9"
    # ... but no attribute makes a loopback address reachable
    set_attribute("127.0.0.1")
    refused = r"attribute consul-mesh\.address .* loopback"
    with pytest.raises(aws.UnusableHostAddress, match=refused):
        hosts.get(world.cluster_arn, world.container_instance_arn)


def test_an_empty_first_page_with_a_token_is_followed() -> None:
    # GIVEN SSM answers the filtered call with empty pages and a NextToken before the row
    ecs = FakeEcs()
    ecs.ssm_empty_pages = 2
    hosts = aws.EcsSsmHosts(lambda: ecs, lambda: ecs, ttl_s=300)

    # WHEN the host is looked up, THEN the pages are followed to its address
    assert hosts.get(CLUSTER_ARN, INSTANCE_ARN).address == HOST_IP
    assert ecs.calls["DescribeInstanceInformation"] == 3


def test_a_managed_instance_ssm_will_not_describe_is_named() -> None:
    ecs = FakeEcs()
    ecs.ssm_refuses.add(INSTANCE_ID)
    hosts = aws.EcsSsmHosts(lambda: ecs, lambda: ecs, ttl_s=300)

    refused = f"SSM will not describe managed instance {INSTANCE_ID}"
    with pytest.raises(aws.AwsLookupError, match=refused) as err:
        hosts.get(CLUSTER_ARN, INSTANCE_ARN)
    assert "InvalidInstanceId" in str(err.value)
    assert "consul-mesh.address" in str(err.value)


def test_invalid_instance_id_through_boto3_is_named() -> None:
    # GIVEN a real boto3 SSM client answering InvalidInstanceId (HTTP 400, SSM API reference)
    ssm = boto3.client("ssm", region_name=REGION)
    hosts = aws.EcsSsmHosts(lambda: _StaticEcs(INSTANCE_ID), lambda: ssm, ttl_s=300)
    with Stubber(ssm) as stub:
        stub.add_client_error(
            "describe_instance_information",
            service_error_code="InvalidInstanceId",
            http_status_code=400,
        )

        # THEN the lookup fails naming the managed instance, not "SSM reports no IP"
        with pytest.raises(aws.AwsLookupError, match="SSM will not describe") as err:
            hosts.get(CLUSTER_ARN, "ci")
    assert err.value.code == "InvalidInstanceId"


def test_ssm_request_shape_and_throttling_through_boto3() -> None:
    # GIVEN a real boto3 SSM client whose answers are stubbed
    ssm = boto3.client("ssm", region_name=REGION)
    ecs = _StaticEcs("mi-0a1b2c3d4e5f60718")
    hosts = aws.EcsSsmHosts(lambda: ecs, lambda: ssm, ttl_s=300)
    expected = {"Filters": [{"Key": "InstanceIds", "Values": ["mi-0a1b2c3d4e5f60718"]}]}
    with Stubber(ssm) as stub:
        stub.add_client_error(
            "describe_instance_information",
            service_error_code="ThrottlingException",
            http_status_code=400,
            expected_params=expected,
        )
        stub.add_response(
            "describe_instance_information",
            {
                "InstanceInformationList": [
                    {"InstanceId": "mi-0a1b2c3d4e5f60718", "IPAddress": "10.4.4.4"}
                ]
            },
            expected,
        )

        # WHEN SSM throttles, THEN the lookup is retryable
        with pytest.raises(aws.AwsUnavailable, match="ThrottlingException"):
            hosts.get("arn:aws:ecs:us-east-1:123456789012:cluster/mesh", "ci")
        # AND the next try reads IPAddress of the managed instance
        assert (
            hosts.get("arn:aws:ecs:us-east-1:123456789012:cluster/mesh", "ci").address == "10.4.4.4"
        )
        stub.assert_no_pending_responses()


class _StaticEcs:
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id

    def describe_container_instances(self, **_: Any) -> dict[str, Any]:
        return {"containerInstances": [{"ec2InstanceId": self.instance_id, "attributes": []}]}


# --------------------------------------------------------------------------------------------
# Token


@pytest.mark.parametrize(
    ("secret", "token"),
    [("s3cr3t-token\n", "s3cr3t-token"), ('{"token": "from-json"}', "from-json")],
)
def test_token_secret_is_the_token_or_json(secret: str, token: str) -> None:
    assert aws.parse_token_secret(secret) == token


@pytest.mark.parametrize(
    ("secret", "message"),
    [("", "empty"), ('{"SecretID": "x"}', 'no "token" string'), ("{broken", 'no "token"')],
)
def test_fails_when_the_token_secret_is_unusable(secret: str, message: str) -> None:
    with pytest.raises(aws.AwsLookupError, match=message):
        aws.parse_token_secret(secret)


# --------------------------------------------------------------------------------------------
# Production wiring, end to end


def test_rotated_token_is_read_again_after_a_403(
    world: MotoWorld, consul_double_acl: ConsulDouble
) -> None:
    # GIVEN the registrar cached a token that Consul no longer accepts
    secrets = boto3.client("secretsmanager", region_name=REGION)
    secrets.put_secret_value(SecretId=world.token_secret_arn, SecretString="revoked-token")
    registrar.set_runtime(moto_runtime(world, consul_double_acl.url))
    assert failed_ids(handler.handler(sqs_event([_event(world)]), LambdaContext())) == ["msg-0"]
    assert consul_double_acl.nodes() == {}

    # WHEN the secret is rotated to a valid token
    secrets.put_secret_value(
        SecretId=world.token_secret_arn, SecretString='{"token": "root-token"}'
    )
    consul_double_acl.reset_requests()
    response = handler.handler(sqs_event([_event(world)]), LambdaContext())

    # THEN one 403 makes the registrar read the secret again, and the task is registered
    assert failed_ids(response) == []
    assert [r.status for r in consul_double_acl.requests][:2] == [403, 404]
    assert len(consul_double_acl.services(node="ecs-task-0f8c6a1e2b3d4c5e9a7b8c9d0e1f2a3b")) == 2


def test_runtime_built_from_the_environment_registers_and_deregisters(
    world: MotoWorld, consul_double_acl: ConsulDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the function's environment as the stack sets it, and a host whose address is
    # pinned by the container instance attribute (so no SSM call is needed)
    boto3.client("ecs", region_name=REGION).put_attributes(
        cluster=world.cluster_arn,
        attributes=[
            {
                "name": "consul-mesh.address",
                "value": "172.16.0.9",
                "targetId": world.container_instance_arn,
            }
        ],
    )
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_double_acl.url)
    monkeypatch.setenv("ECS_CLUSTER_ARN", world.cluster_arn)
    monkeypatch.setenv("CONSUL_TOKEN_SECRET_ARN", world.token_secret_arn)
    monkeypatch.setenv("MAX_ATTEMPTS", "2")
    registrar.set_runtime(None)

    # WHEN a RUNNING then a STOPPING event arrive
    running = handler.handler(sqs_event([_event(world)]), LambdaContext())
    services = consul_double_acl.services()
    stopping = handler.handler(sqs_event([_event(world, "task_stopping.json")]), LambdaContext())

    # THEN the task was registered on the pinned address, then removed
    assert failed_ids(running) == failed_ids(stopping) == []
    assert {s["ServiceAddress"] for s in services} == {"172.16.0.9"}
    assert consul_double_acl.nodes() == {}
    key = kv_layout.task_key(world.cluster_arn, "0f8c6a1e2b3d4c5e9a7b8c9d0e1f2a3b")
    assert key in consul_double_acl.kv()


def test_throttled_ecs_is_retried_then_reported(consul_double: ConsulDouble) -> None:
    # GIVEN ECS throttles every DescribeTaskDefinition
    ecs = boto3.client("ecs", region_name=REGION)
    stub = Stubber(ecs)
    for _ in range(4):
        stub.add_client_error(
            "describe_task_definition",
            service_error_code="ThrottlingException",
            http_status_code=400,
        )
    stub.activate()
    rt = moto_runtime(_no_world(), consul_double.url)
    rt.task_definitions = aws.EcsTaskDefinitions(lambda: ecs)
    registrar.set_runtime(rt)
    try:
        response = handler.handler(sqs_event([task_event()]), LambdaContext())
    finally:
        registrar.set_runtime(None)

    # THEN every attempt was used and the message is left to SQS; Consul was not touched
    assert failed_ids(response) == ["msg-0"]
    stub.assert_no_pending_responses()
    assert consul_double.requests == []


def _no_world() -> MotoWorld:
    return MotoWorld(CLUSTER_ARN, "", "", {}, "", FakeSsm())


def _ca_pem() -> str:
    """A throwaway self-signed CA (cryptography ships with moto): no openssl binary needed."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-consul-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_cacert_from_secret_builds_a_verifying_context(world: MotoWorld) -> None:
    secret = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="consul/ca", SecretString=_ca_pem()
    )["ARN"]
    settings = registrar.Settings.from_env(
        {
            "CONSUL_HTTP_ADDR": "https://consul.internal.example:8501",
            "ECS_CLUSTER_ARN": world.cluster_arn,
            "CONSUL_CACERT_SECRET_ARN": secret,
        }
    )

    context = registrar.ssl_context(settings)

    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "test-consul-ca"),),)
    ]


def test_cacert_as_pem_text_or_file(tmp_path: Path) -> None:
    pem = _ca_pem()
    path = tmp_path / "ca.pem"
    path.write_text(pem)
    base = {"CONSUL_HTTP_ADDR": "https://consul:8501", "ECS_CLUSTER_ARN": CLUSTER_ARN}

    from_text = registrar.ssl_context(registrar.Settings.from_env({**base, "CONSUL_CACERT": pem}))
    from_file = registrar.ssl_context(
        registrar.Settings.from_env({**base, "CONSUL_CACERT": str(path)})
    )
    plain = registrar.ssl_context(
        registrar.Settings.from_env({**base, "CONSUL_HTTP_ADDR": "http://127.0.0.1:8500"})
    )

    assert from_text is not None
    assert from_file is not None
    assert len(from_text.get_ca_certs()) == len(from_file.get_ca_certs()) == 1
    assert plain is None


@pytest.mark.parametrize(
    ("cacert", "message"),
    [
        ("/no/such/ca.pem", "CONSUL_CACERT is neither PEM text nor a file"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not valid PEM"),
    ],
)
def test_fails_when_the_cacert_is_unusable(cacert: str, message: str) -> None:
    settings = registrar.Settings.from_env(
        {
            "CONSUL_HTTP_ADDR": "https://consul:8501",
            "ECS_CLUSTER_ARN": CLUSTER_ARN,
            "CONSUL_CACERT": cacert,
        }
    )
    with pytest.raises(registrar.ConfigError, match=message):
        registrar.ssl_context(settings)
