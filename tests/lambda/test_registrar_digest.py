"""`Registration.digest()` is part of the state records already stored in Consul KV.

Every running task's record holds the digest of its registration; an event whose desired
registration has the same digest writes nothing. If the digest of an unchanged registration
ever changed (a new canonical form, another hash), every running task would look changed after
the deploy and the registrar would rewrite the whole catalog once. These tests pin the digest
to the values the first implementation (sha256 of `dataclasses.asdict`, sorted keys, compact
separators) produced, and check any registration against that form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from decide import desired_registration, mesh_target
from hypothesis import given, settings
from hypothesis import strategies as st
from model import (
    ContainerDefinition,
    ExposePath,
    HealthCheck,
    Host,
    ProxyUpstream,
    Registration,
    ServiceInstance,
    SidecarProxy,
    parse_event,
)
from registrar_fixtures import HOST_IP, task_definition, task_event

META = {
    "task-arn": "arn:aws:ecs:us-east-1:123456789012:task/mesh/0123",
    "task-id": "0123",
    "cluster-arn": "arn:aws:ecs:us-east-1:123456789012:cluster/mesh",
    "container-instance-arn": "arn:aws:ecs:us-east-1:123456789012:container-instance/mesh/c1",
    "source": "ecs-anywhere-registrar",
}


def _check(check_id: str, service_id: str, *, http: str | None = None) -> HealthCheck:
    return HealthCheck(
        check_id=check_id,
        name=f"check of {service_id}",
        service_id=service_id,
        tcp=None if http else "10.20.0.5:32768",
        http=http,
        interval="10s",
        timeout="5s",
    )


# Every kind of field: None, empty and non-empty tuples, nested dataclasses, mappings whose
# insertion order differs from the sorted order, and non-ASCII text (escaped by json.dumps).
PINNED = Registration(
    task_arn=META["task-arn"],
    node="ecs-task-0123",
    address="10.20.0.5",
    node_meta={"source": "ecs-anywhere-registrar", "external-probe": "false", "z": "é"},
    services=(
        ServiceInstance(
            id="web-0123-8080",
            name="web",
            port=32768,
            tags=("v1", "blue-é"),
            meta=META,
            check=_check("service:web-0123-8080", "web-0123-8080"),
        ),
        ServiceInstance(
            id="web-0123-9090",
            name="web",
            port=32770,
            tags=(),
            meta=META,
            check=_check("service:web-0123-9090", "web-0123-9090", http="http://10.20.0.5/h"),
        ),
    ),
    sidecar=SidecarProxy(
        id="web-0123-8080-sidecar-proxy",
        name="web-sidecar-proxy",
        port=32769,
        tags=("v1",),
        meta=META,
        destination_name="web",
        destination_id="web-0123-8080",
        local_service_address="10.20.0.5",
        local_service_port=32768,
        bind_port=20000,
        upstreams=(
            ProxyUpstream("api", 9191, "0.0.0.0"),
            ProxyUpstream("db", 5432, "0.0.0.0"),
        ),
        checks=(_check("service:web-0123-8080-sidecar-proxy", "web-0123-8080-sidecar-proxy"),),
    ),
)
PINNED_DIGEST = "e0d70ba228f6672db9dac681679292402154c9edcabb9ab14148594133789f8d"

# The registrations of the repository's fixture tasks, as the event path builds them.
FIXTURE_DIGESTS = {
    ("task_running_bridge.json", "web"): (
        "1a855b0fe4bd4de19e350f0624df88398b171602616838c97740f6e607c8bff4"
    ),
    # Changed on purpose with issue 12: a host-mode app listens on 127.0.0.1 only, so its
    # checks now dial Envoy's public listener instead of the app's port (and the mirrored
    # check on the proxy went away). Each running host-mode task is rewritten once after the
    # deploy; bridge-mode tasks keep their digest.
    ("task_running_host.json", "api"): (
        "22ce8466d2da00183535490bd21245e17a801a766e49bbaa6dc07ed80ae285a9"
    ),
}


def _asdict_digest(registration: Registration) -> str:
    """The first implementation's digest, kept here as the reference.

    Its one evolution rule: a field added later (SidecarProxy.expose) is left out while empty,
    so the registrations of tasks that do not use it keep the digest their records hold.
    """
    doc = dataclasses.asdict(registration)
    if not doc["sidecar"]["expose"]:
        del doc["sidecar"]["expose"]
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _fixture_registration(template: str, family: str) -> Registration:
    td = task_definition(family)
    app = mesh_target(td)
    assert isinstance(app, ContainerDefinition)
    event = parse_event(json.dumps(task_event(template)))
    return desired_registration(event, td, app, Host(HOST_IP, "mi-0a1b2c3d4e5f60718", "ssm"))


def test_digest_of_a_fixed_registration_never_changes() -> None:
    # GIVEN a registration covering every kind of field
    # WHEN its digest is taken
    # THEN it is the value stored in KV records since the first release
    assert PINNED.digest() == PINNED_DIGEST


def test_a_field_added_later_changes_the_digest_only_when_used() -> None:
    with_expose = dataclasses.replace(
        PINNED,
        sidecar=dataclasses.replace(
            PINNED.sidecar, expose=(ExposePath(20500, "/health", 32768, "http"),)
        ),
    )
    assert with_expose.digest() != PINNED_DIGEST
    assert with_expose.digest() == _asdict_digest(with_expose)


def test_digests_of_the_fixture_tasks_never_change() -> None:
    for (template, family), digest in FIXTURE_DIGESTS.items():
        # A failure here means either the registration of these tasks changed on purpose (then
        # every running task is rewritten once after the deploy: say so in the change) or the
        # digest's canonical form changed by accident.
        assert _fixture_registration(template, family).digest() == digest, template


_text = st.text(max_size=12)
_maybe = st.none() | _text
_meta = st.dictionaries(_text, _text, max_size=4)
_checks = st.builds(HealthCheck, _text, _text, _text, _maybe, _maybe, _text, _text)
_ports = st.integers(1, 65535)
_services = st.builds(
    ServiceInstance, _text, _text, _ports, st.lists(_text, max_size=3).map(tuple), _meta, _checks
)
_sidecars = st.builds(
    SidecarProxy,
    _text,
    _text,
    _ports,
    st.lists(_text, max_size=3).map(tuple),
    _meta,
    _text,
    _text,
    _text,
    _ports,
    _ports,
    st.lists(st.builds(ProxyUpstream, _text, _ports, _text), max_size=3).map(tuple),
    st.lists(_checks, max_size=3).map(tuple),
    st.lists(st.builds(ExposePath, _ports, _text, _ports, _text), max_size=2).map(tuple),
)
_registrations = st.builds(
    Registration,
    _text,
    _text,
    _text,
    _meta,
    st.lists(_services, max_size=3).map(tuple),
    _sidecars,
)


@settings(max_examples=200, deadline=None)
@given(registration=_registrations)
def test_digest_is_the_sha256_of_the_asdict_canonical_json(registration: Registration) -> None:
    # GIVEN any registration (any text, including escapes and non-ASCII)
    # THEN its digest is the one the records in KV were written with
    assert registration.digest() == _asdict_digest(registration)
