"""One event, start to finish: triage, AWS lookups, desired state, apply. Plus configuration.

Configuration (environment; Consul's own names where one exists):
- CONSUL_HTTP_ADDR (required): https://consul.internal.example:8501, or http://127.0.0.1:8500.
- ECS_CLUSTER_ARN (required): events of other clusters are ignored.
- CONSUL_TOKEN_SECRET_ARN: Secrets Manager secret whose SecretString is the ACL token, or JSON
  {"token": "..."}. CONSUL_HTTP_TOKEN: the token itself, for local runs only (an environment
  variable is visible in the function's configuration). The secret wins when both are set.
- CONSUL_CACERT_SECRET_ARN (PEM in SecretString) or CONSUL_CACERT (a PEM file path or PEM
  text): the CA that signed the Consul servers' certificate; default: the system trust store.
- CONSUL_TLS_SERVER_NAME: the name the servers' certificate must carry (SNI and the host name
  check), when CONSUL_HTTP_ADDR dials another name or an IP; default: CONSUL_HTTP_ADDR's host.
- Optional: HOST_IP_TTL_SECONDS (300) how long a host address is cached; MAX_ATTEMPTS (4) tries
  per Consul/AWS call; RETRY_BASE_MS (100) and RETRY_MAX_MS (2000) backoff; CONSUL_TIMEOUT_SECONDS
  (5) per request; CONSUL_LIST_TIMEOUT_SECONDS (30) per listing of a whole set (the reconcile
  pass's nodes, checks and records, the drain's: Consul sends nothing before it has built the
  whole answer: inventory.HttpInventory), both bounded by the time left;
  TIME_RESERVE_MS (2000) invocation time kept to return the batch response;
  LOG_LEVEL (INFO); METRICS_NAMESPACE (ConsulMesh/Registrar).
- RECHECK_QUEUE_URL: the registrar's own queue, where a re-check of an event whose sidecar
  write got no answer is sent (recheck.py); unset (local runs), such a message is failed and
  SQS redelivers it. RECHECK_DELAY_SECONDS (120, 0-900): the re-check's SQS DelaySeconds.

The container-wide state (clients, caches, token, TLS context, kept-alive Consul connections)
lives in one `Runtime`, built on first use; each invocation wraps it with its own time budget.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import apply
import aws
import consul
import consul_http
import decide
import identity
import kv_layout
import logs
import recheck
import retry
from connections import ConnectionPool
from model import (
    ContainerDefinition,
    InvalidTaskDefinition,
    MalformedEvent,
    Registration,
    StoredRecord,
    TaskDefinition,
    TaskEvent,
)

T = TypeVar("T")


class ConfigError(ValueError):
    """The function's environment is wrong: every message fails until it is fixed."""


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


def tls_server_name(raw: str) -> str | None:
    """CONSUL_TLS_SERVER_NAME as Consul's own clients read it: a `:port` is dropped (api/api.go
    SetupTLSConfig: `hasPort := strings.LastIndex(server, ":") > strings.LastIndex(server,
    "]")`, then `net.SplitHostPort`), so `consul.example:8501` and `[2001:db8::1]:8501` name
    `consul.example` and `2001:db8::1`. What net.SplitHostPort refuses is refused here."""
    value = raw.strip()
    if not value or value.rfind(":") <= value.rfind("]"):
        return value or None
    colon = value.rfind(":")
    if value.startswith("["):
        end = value.find("]")
        host, ok = value[1:end], end + 1 == colon and "[" not in value[1:]
    else:
        host, ok = value[:colon], not any(c in value[:colon] for c in ":[]")
    if not ok or not host or "]" in value[colon:]:
        raise ConfigError(
            f"CONSUL_TLS_SERVER_NAME must be a host name or IP, optionally with :port "
            f"(an IPv6 address with a port in brackets: [2001:db8::1]:8501), got {value!r}"
        )
    return host


# Seconds a listing of a whole set may take to answer (CONSUL_LIST_TIMEOUT_SECONDS)
LIST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Settings:
    consul_addr: str
    cluster_arn: str
    token_secret_arn: str | None = None
    static_token: str | None = None
    cacert_secret_arn: str | None = None
    cacert: str | None = None
    tls_server_name: str | None = None
    host_ttl_s: float = 300.0
    retry_policy: retry.RetryPolicy = field(default_factory=retry.RetryPolicy)
    consul_timeout_s: float = 5.0
    consul_list_timeout_s: float = LIST_TIMEOUT_S
    reserve_ms: int = 2000
    recheck_queue_url: str | None = None
    recheck_delay_s: int = recheck.DEFAULT_DELAY_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        addr = env.get("CONSUL_HTTP_ADDR", "").strip()
        if not addr:
            raise ConfigError("CONSUL_HTTP_ADDR is required, e.g. https://consul.example:8501")
        try:
            consul.parse_address(addr)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        cluster_arn = env.get("ECS_CLUSTER_ARN", "").strip()
        try:
            kv_layout.scope(cluster_arn)
            valid_arn = True
        except ValueError:
            valid_arn = False
        if not valid_arn:
            raise ConfigError(
                f"ECS_CLUSTER_ARN must be arn:aws:ecs:<region>:<account>:cluster/<name>, "
                f"got {cluster_arn!r}"
            )
        attempts = _positive(env, "MAX_ATTEMPTS", 4)
        if attempts != int(attempts):
            raise ConfigError(f"MAX_ATTEMPTS must be a whole number, got {attempts}")
        delay = env.get("RECHECK_DELAY_SECONDS", "").strip() or str(recheck.DEFAULT_DELAY_S)
        if not delay.isdigit() or int(delay) > recheck.MAX_DELAY_S:
            raise ConfigError(
                f"RECHECK_DELAY_SECONDS must be a whole number from 0 to {recheck.MAX_DELAY_S} "
                f"(SQS DelaySeconds), got {delay!r}"
            )
        return cls(
            consul_addr=addr,
            cluster_arn=cluster_arn,
            token_secret_arn=env.get("CONSUL_TOKEN_SECRET_ARN", "").strip() or None,
            static_token=env.get("CONSUL_HTTP_TOKEN", "").strip() or None,
            cacert_secret_arn=env.get("CONSUL_CACERT_SECRET_ARN", "").strip() or None,
            cacert=env.get("CONSUL_CACERT", "").strip() or None,
            tls_server_name=tls_server_name(env.get("CONSUL_TLS_SERVER_NAME", "")),
            host_ttl_s=_positive(env, "HOST_IP_TTL_SECONDS", 300),
            retry_policy=retry.RetryPolicy(
                max_attempts=int(attempts),
                base_delay_s=_positive(env, "RETRY_BASE_MS", 100) / 1000,
                max_delay_s=_positive(env, "RETRY_MAX_MS", 2000) / 1000,
            ),
            consul_timeout_s=_positive(env, "CONSUL_TIMEOUT_SECONDS", 5),
            consul_list_timeout_s=_positive(env, "CONSUL_LIST_TIMEOUT_SECONDS", LIST_TIMEOUT_S),
            reserve_ms=int(_positive(env, "TIME_RESERVE_MS", 2000)),
            recheck_queue_url=env.get("RECHECK_QUEUE_URL", "").strip() or None,
            recheck_delay_s=int(delay),
        )


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS context for https Consul: verified against the configured CA (or system CAs)."""
    if consul.parse_address(settings.consul_addr)[0] != "https":
        return None
    pem: str | None = None
    cafile: str | None = None
    if settings.cacert_secret_arn:
        pem = aws.secret_string(lambda: aws.client("secretsmanager"), settings.cacert_secret_arn)
    elif settings.cacert and "-----BEGIN" in settings.cacert:
        pem = settings.cacert
    elif settings.cacert:
        if not Path(settings.cacert).is_file():
            raise ConfigError(f"CONSUL_CACERT is neither PEM text nor a file: {settings.cacert!r}")
        cafile = settings.cacert
    try:
        return consul_http.tls_context(pem, cafile=cafile)
    except ValueError as err:
        raise ConfigError(f"the Consul CA certificate is not valid PEM: {err}") from None


class Runtime:
    """Per-container state: settings, AWS sources, Consul token, TLS, connections; made once."""

    def __init__(
        self,
        settings: Settings,
        *,
        task_definitions: aws.TaskDefinitionSource | None = None,
        hosts: aws.HostSource | None = None,
        token: consul.TokenProvider | None = None,
        connections: ConnectionPool | None = None,
        rechecks: recheck.Scheduler | None = None,
    ) -> None:
        self.settings = settings
        self.task_definitions = task_definitions or aws.EcsTaskDefinitions(
            lambda: aws.client("ecs")
        )
        self.hosts = hosts or aws.EcsSsmHosts(
            lambda: aws.client("ecs"), lambda: aws.client("ssm"), settings.host_ttl_s
        )
        if token is None:
            if settings.token_secret_arn:
                token = aws.SecretToken(
                    lambda: aws.client("secretsmanager"), settings.token_secret_arn
                )
            else:
                token = consul.StaticToken(settings.static_token)
        self.token = token
        if rechecks is None:
            queue_url = settings.recheck_queue_url
            rechecks = (
                recheck.SqsScheduler(lambda: aws.client("sqs"), queue_url, settings.recheck_delay_s)
                if queue_url
                else recheck.NoScheduler()
            )
        self.rechecks = rechecks
        self._connections = connections
        self._lock = threading.Lock()

    def consul_connections(self) -> ConnectionPool:
        """The container's kept-alive Consul connections (TLS context read on first use)."""
        with self._lock:
            if self._connections is None:
                self._connections = ConnectionPool(
                    self.settings.consul_addr,
                    ssl_context=ssl_context(self.settings),
                    server_name=self.settings.tls_server_name,
                )
            return self._connections

    def close(self) -> None:
        """Close the idle Consul connections (tests and local runs; Lambda just freezes)."""
        with self._lock:
            connections = self._connections
        if connections is not None:
            connections.close()

    def consul(self, budget: retry.Budget) -> consul.RetryingConsul:
        """A Consul client bound to this invocation's budget, retrying transient failures."""
        http = consul.HttpConsul(
            self.settings.consul_addr,
            token=self.token,
            connections=self.consul_connections(),
            timeout_s=self.settings.consul_timeout_s,
            remaining_s=budget.remaining_s,
        )
        return consul.RetryingConsul(http, policy=self.settings.retry_policy, budget=budget)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """The container's Runtime, built from the environment on first use."""
    global _runtime  # noqa: PLW0603 - one per Lambda container, by design
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(Settings.from_env(os.environ))
        return _runtime


def set_runtime(value: Runtime | None) -> None:
    """Replace (tests, local runs) or forget (None) the container's Runtime.

    The replaced Runtime's idle connections are closed (it stays usable if still referenced).
    """
    global _runtime  # noqa: PLW0603
    with _runtime_lock:
        previous = _runtime
        _runtime = value
    if previous is not None and previous is not value:
        previous.close()


class Registrar:
    """Handles events for one invocation, within its time budget."""

    def __init__(self, rt: Runtime, budget: retry.Budget) -> None:
        self._rt = rt
        self._budget = budget

    def _aws(self, what: str, fn: Callable[[], T]) -> T:
        return retry.call(fn, what=what, policy=self._rt.settings.retry_policy, budget=self._budget)

    def handle(self, event: TaskEvent) -> apply.Result:
        """Apply one event. Raises MalformedEvent, RetryableError or other errors to fail it."""
        settings = self._rt.settings
        phase = decide.triage(event, settings.cluster_arn)
        if isinstance(phase, decide.Skip):
            return apply.Result(phase.kind, phase.reason)
        try:
            task_definition = self._aws(
                "DescribeTaskDefinition",
                lambda: self._rt.task_definitions.get(event.task_definition_arn),
            )
        except (aws.AwsLookupError, retry.RetryableError) as err:
            return self._without_task_definition(event, phase, err)
        app = decide.mesh_target(task_definition)
        if phase == "stop":
            return self._stop(event, app)
        if isinstance(app, decide.Skip):
            return apply.Result(app.kind, app.reason)
        return self._run(event, task_definition, app)

    def _stop(self, event: TaskEvent, app: ContainerDefinition | decide.Skip) -> apply.Result:
        # Opted in but refused now (a later release may validate more): a task that was
        # registered still leaves the catalog.
        if isinstance(app, decide.Skip) and (app.kind == "ignored" or self._stored(event) is None):
            return apply.Result(app.kind, app.reason)
        return self._apply(event, None)

    def _run(
        self, event: TaskEvent, task_definition: TaskDefinition, app: ContainerDefinition
    ) -> apply.Result:
        instance = event.container_instance_arn
        if instance is None:
            raise MalformedEvent("detail.containerInstanceArn is missing for a RUNNING task")
        try:
            host = self._aws(
                "host address", lambda: self._rt.hosts.get(event.cluster_arn, instance)
            )
        except aws.UnusableHostAddress as err:
            # Redelivery cannot fix it; the reconcile pass registers the task once the
            # operator has set the address (it reads addresses afresh every pass).
            return apply.Result("unaddressable", str(err))
        except aws.AwsLookupError as err:
            return self._behind_stop(event, err)
        try:
            desired = decide.desired_registration(event, task_definition, app, host)
        except InvalidTaskDefinition as err:
            return apply.Result("invalid", f"{task_definition.arn}: {err}")
        return self._apply(event, desired)

    def _without_task_definition(
        self, event: TaskEvent, phase: str, err: Exception
    ) -> apply.Result:
        """ "You can only describe INACTIVE task definitions while an active task or service
        references them" (DescribeTaskDefinition, ECS API reference): an event handled late (a
        backlog, a DLQ redrive) may find its revision gone. Raises `err` when that matters."""
        if phase == "stop":
            # A stop needs nothing from it: the record says whether the task was registered,
            # and a stop without a record leaves a tombstone (collected after
            # TOMBSTONE_GRACE_HOURS) rather than let a RUNNING event delivered after it
            # register the task.
            logs.info(
                "task definition unavailable; applying the stop from the state record",
                error=f"{type(err).__name__}: {err}",
            )
            return self._apply(event, None)
        if isinstance(err, aws.AwsLookupError):
            # A RUNNING event of a task that may have stopped since: see _behind_stop.
            return self._behind_stop(event, err)
        raise err

    def _stored(self, event: TaskEvent) -> StoredRecord | None:
        key = kv_layout.task_key(event.cluster_arn, event.task_id)
        return apply.read_record(self._rt.consul(self._budget), key)

    def schedule_recheck(self, body: str, number: int) -> None:
        """Send `body` back to the queue as re-check `number` (retried; raises on failure)."""
        self._aws("SendMessage", lambda: self._rt.rechecks.schedule(body, number))

    def recheck(self, event: TaskEvent) -> apply.Result:
        """A re-check message (recheck.py): compare the catalog with the record; no AWS."""
        if event.cluster_arn != self._rt.settings.cluster_arn:
            return apply.Result("ignored", f"task of cluster {event.cluster_arn}")
        client = self._rt.consul(self._budget)
        result = apply.recheck(
            client,
            kv_layout.task_key(event.cluster_arn, event.task_id),
            identity.node_name(event.task_arn),
        )
        return replace(result, unanswered=client.unanswered_registers)

    def _behind_stop(self, event: TaskEvent, err: Exception) -> apply.Result:
        """A RUNNING event whose AWS lookup was refused: fine if the task has stopped since.

        A deploy that fails stops its tasks, and its rollback deregisters the new revision,
        which ECS then describes only "while an active task or service references them"
        (DescribeTaskDefinition, ECS API reference); its container instance may be gone too.
        The redelivery of such a task's RUNNING event must still check that a late sidecar
        write did not bring its node back: behind a tombstone the catalog is checked from the
        record alone. Otherwise the lookup failure stands (SQS redelivers the message), as does
        a transient one (throttling) whatever the record says: it costs no Consul request.
        """
        client = self._rt.consul(self._budget)
        stopped = apply.check_stopped(
            client,
            kv_layout.task_key(event.cluster_arn, event.task_id),
            identity.node_name(event.task_arn),
            "AWS lookup failed behind a stop",
        )
        if stopped is None:
            raise err
        logs.info(
            "task stopped since; checked the catalog without AWS lookups",
            error=f"{type(err).__name__}: {err}",
        )
        return stopped

    def _apply(self, event: TaskEvent, desired: Registration | None) -> apply.Result:
        client = self._rt.consul(self._budget)
        result = apply.apply(
            client,
            key=kv_layout.task_key(event.cluster_arn, event.task_id),
            node=identity.node_name(event.task_arn),
            desired=desired,
            version=event.version,
            event_time=event.event_time.isoformat(),
        )
        # The catalog is right as of the re-read that ended `apply`, but an unanswered sidecar
        # write may land after it and recreate the node of a task that stopped meanwhile: the
        # handler schedules a re-check (recheck.py).
        return replace(result, unanswered=client.unanswered_registers)
