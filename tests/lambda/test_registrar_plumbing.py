"""Retries, time budget, configuration and the Consul client's error mapping."""

from __future__ import annotations

import pytest
import registrar
import retry
from connections import ConnectionPool
from consul import (
    ConsulAuthError,
    ConsulRequestError,
    ConsulUnavailable,
    HttpConsul,
    RetryingConsul,
    StaticToken,
)
from registrar_fixtures import CLUSTER_ARN

from tests.consul_double import ConsulDouble


class Flaky:
    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.error = error or ConsulUnavailable("HTTP 503")

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_retries_with_capped_exponential_full_jitter() -> None:
    sleeps: list[float] = []
    flaky = Flaky(3)
    policy = retry.RetryPolicy(max_attempts=4, base_delay_s=0.1, max_delay_s=0.25)

    result = retry.call(
        flaky,
        what="op",
        policy=policy,
        budget=retry.Budget.fixed(60),
        sleep=sleeps.append,
        jitter=lambda: 1.0,
    )

    assert result == "ok"
    assert sleeps == [0.1, 0.2, 0.25]


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    flaky = Flaky(10)
    policy = retry.RetryPolicy(max_attempts=3, base_delay_s=0.0)

    with pytest.raises(ConsulUnavailable, match="HTTP 503"):
        retry.call(
            flaky, what="op", policy=policy, budget=retry.Budget.fixed(60), sleep=lambda s: None
        )
    assert flaky.calls == 3


def test_gives_up_when_the_backoff_would_outlast_the_budget() -> None:
    flaky = Flaky(10)
    remaining = [1_500]  # ms, minus a 1 s reserve: 0.5 s of budget
    budget = retry.Budget(lambda: remaining[0], reserve_ms=1_000)
    policy = retry.RetryPolicy(max_attempts=10, base_delay_s=1.0, max_delay_s=1.0)

    with pytest.raises(ConsulUnavailable):
        retry.call(flaky, what="op", policy=policy, budget=budget, jitter=lambda: 0.9)
    assert flaky.calls == 1


def test_no_attempt_without_budget() -> None:
    flaky = Flaky(0)
    budget = retry.Budget(lambda: 900, reserve_ms=1_000)

    with pytest.raises(retry.BudgetExhausted, match="op: no time left"):
        retry.call(flaky, what="op", policy=retry.RetryPolicy(), budget=budget)
    assert flaky.calls == 0


def test_budget_exhausted_is_raised_at_once_not_retried(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a call that finds no time left for its request (aws.aws_call's check)
    out_of_time = Flaky(10, retry.BudgetExhausted("op: 1.0 s left"))
    slept: list[float] = []

    # WHEN it runs under a policy that would retry a transient failure
    with pytest.raises(retry.BudgetExhausted):
        retry.call(
            out_of_time,
            what="op",
            policy=retry.RetryPolicy(max_attempts=4),
            budget=retry.Budget.fixed(60),
            sleep=slept.append,
        )

    # THEN it gives up at once: one call, no backoff, no "retrying" line
    assert (out_of_time.calls, slept) == (1, [])
    assert "retrying after a transient failure" not in capsys.readouterr().out


def test_permanent_errors_are_not_retried() -> None:
    flaky = Flaky(1, ConsulRequestError("HTTP 400"))

    with pytest.raises(ConsulRequestError):
        retry.call(flaky, what="op", policy=retry.RetryPolicy(), budget=retry.Budget.fixed(60))
    assert flaky.calls == 1


# --------------------------------------------------------------------------------------------
# Configuration


BASE = {"CONSUL_HTTP_ADDR": "https://consul.internal.example:8501", "ECS_CLUSTER_ARN": CLUSTER_ARN}


def test_settings_defaults() -> None:
    settings = registrar.Settings.from_env(BASE)

    assert settings.host_ttl_s == 300
    assert settings.retry_policy == retry.RetryPolicy(4, 0.1, 2.0)
    assert (settings.consul_timeout_s, settings.reserve_ms) == (5, 2000)
    assert settings.consul_list_timeout_s == 30
    assert (
        registrar.Settings.from_env(
            {**BASE, "CONSUL_LIST_TIMEOUT_SECONDS": "90"}
        ).consul_list_timeout_s
        == 90
    )
    assert settings.token_secret_arn is None
    assert (settings.recheck_queue_url, settings.recheck_delay_s) == (None, 120)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONSUL_HTTP_ADDR": ""}, "CONSUL_HTTP_ADDR is required"),
        ({"CONSUL_HTTP_ADDR": "consul:8501"}, "CONSUL_HTTP_ADDR must look like https://"),
        ({"CONSUL_HTTP_ADDR": "https://consul:8501/v1"}, "must not carry a path"),
        ({"ECS_CLUSTER_ARN": "mesh"}, "ECS_CLUSTER_ARN must be arn:aws:ecs:.* got 'mesh'"),
        ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS must be a positive number, got '0'"),
        ({"MAX_ATTEMPTS": "2.5"}, "MAX_ATTEMPTS must be a whole number"),
        ({"HOST_IP_TTL_SECONDS": "soon"}, "HOST_IP_TTL_SECONDS must be a positive number"),
        ({"CONSUL_LIST_TIMEOUT_SECONDS": "0"}, "CONSUL_LIST_TIMEOUT_SECONDS must be a positive"),
        ({"RECHECK_DELAY_SECONDS": "901"}, "RECHECK_DELAY_SECONDS must be a whole number from 0"),
        ({"RECHECK_DELAY_SECONDS": "2m"}, "RECHECK_DELAY_SECONDS .* got '2m'"),
    ],
)
def test_fails_when_the_environment_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(registrar.ConfigError, match=message):
        registrar.Settings.from_env({**BASE, **env})


# --------------------------------------------------------------------------------------------
# Consul client error mapping


def _http(double: ConsulDouble, token: str | None = None) -> HttpConsul:
    return HttpConsul(
        double.url, token=StaticToken(token), connections=ConnectionPool(double.url), timeout_s=1
    )


def test_client_errors_are_not_retried(consul_double: ConsulDouble) -> None:
    consul_double.inject(kind="status", status=400, path_prefix="/v1/catalog/register", times=-1)
    client = RetryingConsul(
        _http(consul_double), policy=retry.RetryPolicy(4, 0.0), budget=retry.Budget.fixed(10)
    )

    with pytest.raises(ConsulRequestError, match="HTTP 400"):
        client.catalog_register({"Node": "n", "Address": "10.0.0.1"})
    assert consul_double.count(path_prefix="/v1/catalog/register") == 1


def test_static_token_403_is_an_auth_error(consul_double_acl: ConsulDouble) -> None:
    with pytest.raises(ConsulAuthError, match="HTTP 403"):
        _http(consul_double_acl, "wrong-token").catalog_deregister("ecs-task-x")
    assert consul_double_acl.count() == 1


def test_unreachable_consul_is_retryable() -> None:
    with ConsulDouble() as double:
        url = double.url
    client = HttpConsul(url, token=StaticToken(None), connections=ConnectionPool(url), timeout_s=1)

    with pytest.raises(ConsulUnavailable, match="GET /v1/kv/k"):
        client.kv_get("k")


def test_missing_node_reads_as_none(consul_double: ConsulDouble) -> None:
    assert _http(consul_double).node_services("ecs-task-missing") is None
