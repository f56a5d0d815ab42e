"""AWS lookups behind small Protocols, with the caches that keep them cheap.

- Task definitions are immutable per ARN (family:revision): cached for the container's life.
- Host addresses: container instance -> `ec2InstanceId` (`mi-...`) -> SSM
  DescribeInstanceInformation -> `IPAddress`, or the container instance attribute
  `consul-mesh.address` when set (multi-homed or NATed hosts); cached with a TTL.
- The Consul ACL token: read once from Secrets Manager, read again after a 403.

boto3 is imported on first use (events of other clusters never need it) and each client is
created once per container. botocore's own retries are off: retry.py retries throttling
inside the invocation's time budget instead of letting two retry loops multiply.

Time budget: like a Consul request (whose timeout shrinks to the time left), an AWS request is
not started when it could outlast the invocation's budget (`within`): botocore gives up on a
request after CONNECT_TIMEOUT_S to connect and READ_TIMEOUT_S per read ("The time in seconds
till a timeout exception is thrown when attempting to make a connection / to read from a
connection", botocore config.py), so a request needs up to their sum, and one that cannot have
it fails at once with BudgetExhausted (the message goes back to SQS, a pass stops there).

Those timeouts do not bound a request, though: urllib3 (2.x, `util/connection.py`
`create_connection`) tries every address DNS returns with the connect timeout each, and
botocore's read timeout applies per socket read. So a request inside a budget also runs under a
hard deadline (`_before`): when the budget runs out first, the caller gets BudgetExhausted and
the request is left to finish on its own thread. Every AWS request the registrar makes is a
read (Describe*, List*, GetSecretValue), so an abandoned one has no effect.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

import logs
from model import Host, TaskDefinition, task_definition_from_api, valid_address
from retry import Budget, BudgetExhausted, RetryableError

T = TypeVar("T")

ADDRESS_ATTRIBUTE = "consul-mesh.address"
MAX_SSM_PAGES = 20  # pages of one filtered DescribeInstanceInformation before giving up

_THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "InternalServiceError",
        "ServerException",
    }
)


class AwsUnavailable(RetryableError):
    """Throttled, 5xx, or no connection: retry with backoff."""


class AwsLookupError(Exception):
    """AWS answered, but not with what we need (unknown ARN, access denied, no IP).

    `code` is AWS's error code when AWS refused the call (e.g. `InvalidInstanceId`).
    """

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


# DescribeInstanceInformation fails the whole call when one of its InstanceIds is not a managed
# instance SSM will describe (SSM API reference, Errors: InvalidInstanceId "SSM Agent isn't
# registered with the SSM endpoint", "isn't in valid state"; InvalidInstanceInformationFilterValue
# "The specified filter value isn't valid"). Which of the two a deregistered mi- ID draws is not
# documented: both are treated as "this ID is bad, the others may be fine".
SSM_BAD_ID_CODES = frozenset({"InvalidInstanceId", "InvalidInstanceInformationFilterValue"})


class UnusableHostAddress(AwsLookupError):
    """The host's address is one no other host can reach: it is never registered."""

    def __init__(self, container_instance_arn: str, message: str) -> None:
        super().__init__(message)
        self.container_instance_arn = container_instance_arn


# --------------------------------------------------------------------------------------------
# Clients


CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 5
# The longest one request takes before botocore gives up on it: one connect, one read (the
# answers the registrar reads are small JSON documents, read at once).
ATTEMPT_S = CONNECT_TIMEOUT_S + READ_TIMEOUT_S

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()
_budget: ContextVar[Budget | None] = ContextVar("aws_budget", default=None)


@contextmanager
def within(budget: Budget) -> Iterator[None]:
    """Hold every AWS request made inside to `budget` (one invocation's, per thread)."""
    token = _budget.set(budget)
    try:
        yield
    finally:
        _budget.reset(token)


def client(service: str) -> Any:
    """The container's boto3 client for `service` (AWS_ENDPOINT_URL redirects it)."""
    with _clients_lock:
        if service not in _clients:
            import boto3  # noqa: PLC0415 - lazy: not every invocation needs AWS
            from botocore.config import Config  # noqa: PLC0415

            config = Config(
                retries={"total_max_attempts": 1},
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
            )
            _clients[service] = boto3.client(service, config=config)
        return _clients[service]


def reset_clients() -> None:
    """Forget the clients (tests that switch endpoints or mocks)."""
    with _clients_lock:
        _clients.clear()


def aws_call(what: str, fn: Callable[[], T]) -> T:
    """Run one AWS call, mapping its failures to AwsUnavailable or AwsLookupError.

    Not started (BudgetExhausted) when the invocation's budget (`within`) is shorter than
    ATTEMPT_S: the request could still be running when the function must return.
    """
    budget = _budget.get()
    if budget is not None and budget.remaining_s() < ATTEMPT_S:
        raise BudgetExhausted(
            f"{what}: {budget.remaining_s():.1f} s left in this invocation, and a request may "
            f"take {ATTEMPT_S} s (connect {CONNECT_TIMEOUT_S} s + read {READ_TIMEOUT_S} s)"
        )
    from botocore.exceptions import (  # noqa: PLC0415
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
    )

    try:
        return fn() if budget is None else _before(budget.remaining_s(), what, fn)
    except ClientError as err:
        error = err.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{what}: {code}: {error.get('Message', '')}"
        if code in _THROTTLING or status == 429 or status >= 500:
            raise AwsUnavailable(message) from err
        raise AwsLookupError(message, code=code) from err
    except (ConnectionError, HTTPClientError) as err:
        raise AwsUnavailable(f"{what}: {err}") from err
    except BotoCoreError as err:
        raise AwsLookupError(f"{what}: {err}") from err


def _before(deadline_s: float, what: str, fn: Callable[[], T]) -> T:
    """`fn()`, or BudgetExhausted when it has not returned within `deadline_s` (it goes on,
    abandoned, on its own daemon thread; its answer is dropped)."""
    outcome: list[T] = []
    failure: list[BaseException] = []
    context = contextvars.copy_context()

    def run() -> None:
        try:
            outcome.append(context.run(fn))
        except BaseException as err:  # re-raised in the caller's thread
            failure.append(err)

    worker = threading.Thread(target=run, name=f"aws {what}", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if worker.is_alive():
        raise BudgetExhausted(
            f"{what}: no answer within the {deadline_s:.1f} s left in this invocation "
            "(the request is abandoned)"
        )
    if failure:
        raise failure[0]
    return outcome[0]


# --------------------------------------------------------------------------------------------
# Task definitions


class TaskDefinitionSource(Protocol):
    def get(self, arn: str) -> TaskDefinition: ...


class EcsTaskDefinitions:
    """DescribeTaskDefinition, cached per ARN (a revision never changes)."""

    def __init__(self, ecs: Callable[[], Any], max_entries: int = 512) -> None:
        self._ecs = ecs
        self._max = max_entries
        self._cache: OrderedDict[str, TaskDefinition] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, arn: str) -> TaskDefinition:
        with self._lock:
            if arn in self._cache:
                self._cache.move_to_end(arn)
                return self._cache[arn]
        response = aws_call(
            f"DescribeTaskDefinition {arn}",
            lambda: self._ecs().describe_task_definition(taskDefinition=arn),
        )
        definition = task_definition_from_api(response["taskDefinition"])
        with self._lock:
            self._cache[arn] = definition
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return definition


# --------------------------------------------------------------------------------------------
# Host addresses

# The SSM agent reports the first interface by index as a hybrid host's IPAddress, which on a
# Docker host can be the default bridge, docker0 (aws/amazon-ssm-agent#553, open; #27, #75).
# Docker gives docker0 172.17.0.0/16 unless configured otherwise (Docker's default-address-pools
# / bip). An operator who really numbers hosts there sets the attribute, which is trusted.
DOCKER_DEFAULT_BRIDGE = ipaddress.ip_network("172.17.0.0/16")
# Docker numbers user-defined bridges (`br-*`, which can be the first interface just as well)
# from its other local-scope default pools, 172.18.0.0/16 to 172.31.0.0/16 (moby
# daemon/libnetwork/ipamutils/utils.go `localScopeDefaultNetworks`; its 192.168.0.0/16 pool is
# left out, on-prem networks use it too). Real hosts are numbered there as well, so an SSM
# address in them is not refused: it is reported (`address_doubt`), and the attribute settles it.
DOCKER_BRIDGE_POOLS = tuple(
    ipaddress.ip_network(n)
    for n in ("172.18.0.0/15", "172.20.0.0/14", "172.24.0.0/14", "172.28.0.0/14")
)


def address_problem(value: str, *, from_ssm: bool) -> str | None:
    """Why `value` cannot be a host's address in the catalog, or None when it can."""
    ip = ipaddress.ip_address(value)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, hit in (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
    ):
        if hit:
            return f"{kind} address"
    if from_ssm and ip in DOCKER_DEFAULT_BRIDGE:
        return f"in Docker's default bridge network {DOCKER_DEFAULT_BRIDGE} (docker0)"
    return None


def address_doubt(value: str) -> str | None:
    """Why an address SSM reports may be a Docker bridge's rather than the host's, or None."""
    ip = ipaddress.ip_address(value)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    pool = next((n for n in DOCKER_BRIDGE_POOLS if ip in n), None)
    if pool is None:
        return None
    return f"in {pool}, from which Docker numbers user-defined bridges (br-*)"


class HostSource(Protocol):
    def get(self, cluster_arn: str, container_instance_arn: str) -> Host: ...


class EcsSsmHosts:
    """Container instance -> host address, cached per container instance for `ttl_s`."""

    def __init__(
        self,
        ecs: Callable[[], Any],
        ssm: Callable[[], Any],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ecs = ecs
        self._ssm = ssm
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Host]] = {}
        self._lock = threading.Lock()

    def get(self, cluster_arn: str, container_instance_arn: str) -> Host:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(container_instance_arn)
        if hit and hit[0] > now:
            return hit[1]
        host = self._lookup(cluster_arn, container_instance_arn)
        with self._lock:
            self._cache[container_instance_arn] = (now + self._ttl_s, host)
        return host

    def _lookup(self, cluster_arn: str, container_instance_arn: str) -> Host:
        response = aws_call(
            f"DescribeContainerInstances {container_instance_arn}",
            lambda: self._ecs().describe_container_instances(
                cluster=cluster_arn, containerInstances=[container_instance_arn]
            ),
        )
        instances = response.get("containerInstances") or []
        if not instances:
            reasons = [f.get("reason") for f in response.get("failures") or []]
            raise AwsLookupError(
                f"container instance {container_instance_arn} not found: {reasons}"
            )
        instance = instances[0]
        instance_id = str(instance.get("ec2InstanceId") or "")
        attributes = {a.get("name"): a.get("value") for a in instance.get("attributes") or []}
        override = attributes.get(ADDRESS_ATTRIBUTE)
        if override:
            if not valid_address(override):
                raise AwsLookupError(
                    f"attribute {ADDRESS_ATTRIBUTE} of {container_instance_arn} must be an IP "
                    f"address, got {override!r}"
                )
            problem = address_problem(override, from_ssm=False)
            if problem:
                raise UnusableHostAddress(
                    container_instance_arn,
                    f"attribute {ADDRESS_ATTRIBUTE} of container instance {container_instance_arn}"
                    f" is {override}, {problem}, which other hosts cannot reach; set it to the "
                    "host's own reachable IP",
                )
            return Host(address=override, instance_id=instance_id, source="attribute")
        if not instance_id:
            raise AwsLookupError(
                f"container instance {container_instance_arn} has no ec2InstanceId"
            )
        info = self._instance_information(container_instance_arn, instance_id)
        address = info.get("IPAddress") if info else None
        if not isinstance(address, str) or not valid_address(address):
            raise AwsLookupError(
                f"SSM reports no IP address for {instance_id} (got {address!r}); set the "
                f"container instance attribute {ADDRESS_ATTRIBUTE}"
            )
        problem = address_problem(address, from_ssm=True)
        if problem:
            raise UnusableHostAddress(
                container_instance_arn,
                f"container instance {container_instance_arn}: SSM reports {address} for "
                f"{instance_id}, {problem}, which other hosts cannot reach (the SSM agent "
                "reports the first interface it finds, aws/amazon-ssm-agent#553); set the "
                f"container instance attribute {ADDRESS_ATTRIBUTE} to the host's reachable IP: "
                f"aws ecs put-attributes --cluster {cluster_arn} --attributes "
                f"name={ADDRESS_ATTRIBUTE},value=<ip>,targetId={container_instance_arn}",
            )
        doubt = address_doubt(address)
        if doubt:
            logs.warning(
                f"SSM reports {address} for {instance_id}, {doubt}: registered, but if it is a "
                f"Docker bridge no other host can reach it; set the container instance "
                f"attribute {ADDRESS_ATTRIBUTE} to the host's reachable IP",
                container_instance_arn=container_instance_arn,
            )
        return Host(address=address, instance_id=instance_id, source="ssm", doubt=doubt)

    def _instance_information(
        self, container_instance_arn: str, instance_id: str
    ) -> Mapping[str, Any] | None:
        """The managed instance's InstanceInformation, following NextToken: a filtered page may
        come back empty with a token (the filter applies to a page, not before paging)."""
        kwargs: dict[str, Any] = {"Filters": [{"Key": "InstanceIds", "Values": [instance_id]}]}
        for _ in range(MAX_SSM_PAGES):
            try:
                page = aws_call(
                    f"DescribeInstanceInformation {instance_id}",
                    lambda: self._ssm().describe_instance_information(**kwargs),
                )
            except AwsLookupError as err:
                if err.code not in SSM_BAD_ID_CODES:
                    raise
                raise AwsLookupError(
                    f"SSM will not describe managed instance {instance_id} of container instance "
                    f"{container_instance_arn} ({err}): it may have been deregistered from SSM; "
                    f"register the host again, or set the container instance attribute "
                    f"{ADDRESS_ATTRIBUTE}",
                    code=err.code,
                ) from err
            found = page.get("InstanceInformationList") or []
            if found and isinstance(found[0], Mapping):
                return found[0]
            token = page.get("NextToken")
            if not token:
                return None
            kwargs["NextToken"] = token
        return None


# --------------------------------------------------------------------------------------------
# Secrets


def parse_token_secret(secret: str) -> str:
    """SecretString is the token itself, or JSON {"token": "..."}: accept both."""
    text = secret.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        token = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token.strip():
            raise AwsLookupError('the Consul token secret is JSON but has no "token" string')
        return token.strip()
    if not text:
        raise AwsLookupError("the Consul token secret is empty")
    return text


def secret_string(secrets: Callable[[], Any], arn: str) -> str:
    response = aws_call(f"GetSecretValue {arn}", lambda: secrets().get_secret_value(SecretId=arn))
    value = response.get("SecretString")
    if not isinstance(value, str):
        raise AwsLookupError(f"secret {arn} has no SecretString")
    return value


class SecretToken:
    """The registrar's Consul token, read once per container; read again on demand (403)."""

    def __init__(self, secrets: Callable[[], Any], arn: str) -> None:
        self._secrets = secrets
        self._arn = arn
        self._token: str | None = None
        self._lock = threading.Lock()

    @property
    def refreshable(self) -> bool:
        return True

    def get(self, *, refresh: bool = False) -> str | None:
        with self._lock:
            if self._token is None or refresh:
                self._token = parse_token_secret(secret_string(self._secrets, self._arn))
            return self._token
