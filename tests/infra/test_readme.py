"""The README is the operator's contract: its commands and its configuration table stay true."""

from __future__ import annotations

import json
import re

from mesh_stack.config import FIELDS, MeshConfig
from mesh_stack.demo import DEMO_IMAGE
from mesh_stack.image_ref import ENVOY_REPOSITORY, INIT_IMAGE, registry_host
from mesh_stack.onprem_contract import INSTALL_SCRIPT
from mesh_stack.ports import CONSUL_GRPC_TLS, CONSUL_HTTPS, ENVOY_INBOUND_PORTS
from mesh_stack.services_config import intentions
from tests.conftest import ROOT
from tools.config_table import table

README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    assert "make synth" in first_block
    assert "make test" in first_block


def test_configuration_table_matches_config_py() -> None:
    # Every key documented with its real default, and no stale key.
    assert table() in README, "README table is stale: paste `python -m tools.config_table`"
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", README, flags=re.MULTILINE))
    assert documented == set(FIELDS)


def _checklist() -> str:
    start = README.index("## Before you deploy")
    return README[start : README.index("\n## ", start + 1)]


def test_before_you_deploy_comes_first() -> None:
    # The checklist is the first section: before Prerequisites, Deploy and the table.
    headings = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
    assert headings[0] == "Before you deploy"


def test_checklist_states_the_ports_the_stack_opens() -> None:
    text = _checklist()
    low, high = ENVOY_INBOUND_PORTS
    assert f"TCP {CONSUL_GRPC_TLS}" in text
    assert f"TCP {CONSUL_HTTPS}" in text
    assert text.count(f"TCP {low}-{high}") >= 2  # servers -> hosts, hosts <-> hosts


def test_checklist_names_the_registries_of_the_default_images() -> None:
    text = _checklist()
    assert "Docker Hub" in text
    assert registry_host(ENVOY_REPOSITORY) == "docker.io"
    assert ENVOY_REPOSITORY in text
    assert DEMO_IMAGE.split(":")[0] in text
    assert registry_host(DEMO_IMAGE) == "docker.io"
    assert registry_host(INIT_IMAGE) in text
    assert INSTALL_SCRIPT.split("/")[2] in text


def test_checklist_names_the_quotas_and_the_deploy_gate() -> None:
    text = _checklist()
    default_zones = FIELDS["az_count"].default
    assert f"{default_zones} of each with the default `az_count`" in text
    assert "Elastic IP" in text
    assert "NAT gateway" in text
    assert "Concurrent executions" in text
    assert "`make deploy` refuses" in text
    assert "`environment=dev`" in text


def readme_example() -> dict[str, object]:
    """The README's smallest real `services` example, as it would sit in cdk.json's context."""
    section = README.split("### Adding mesh services", 1)[1]
    example: dict[str, object] = json.loads(
        "{" + section.split("```json\n", 1)[1].split("```", 1)[0] + "}"
    )
    return example


def readme_services_example() -> object:
    """The `services` object of that example."""
    return readme_example()["services"]


def test_the_services_example_is_a_valid_configuration() -> None:
    example = readme_example()
    # with the demo on or off, and with its default: on in dev, off elsewhere
    for extra, demo_on in (
        ({"demo_enabled": True}, True),
        ({"demo_enabled": False}, False),
        ({"environment": "dev"}, True),
        ({"environment": "prod"}, False),
    ):
        config = MeshConfig.from_context({**example, **extra})
        assert [s.name for s in config.services] == ["orders", "payments"]
        assert intentions(config.services) == [("orders", "payments")]
        assert bool(config.demo_services) is demo_on, extra


def test_the_checklist_names_the_registries_of_the_services_example() -> None:
    # Hosts pull the example's images too: the checklist tells where from.
    text = " ".join(_checklist().split())
    services = readme_services_example()
    assert isinstance(services, dict)
    for entry in services.values():
        assert f"`{registry_host(entry['image'])}`" in text


def test_checklist_quotes_docker_hubs_current_pull_limits() -> None:
    # docs.docker.com/docker-hub/usage/pulls/ (docker/docs PR #22326, 2025-03-27): the limits
    # are per 6 hours, Unauthenticated 100 per IPv4 address or IPv6 /64, Personal 200.
    text = " ".join(_checklist().split())
    assert "https://docs.docker.com/docker-hub/usage/pulls/" in text
    assert "anonymous pulls to 100 per 6 hours per IPv4 address (or IPv6 /64)" in text
    assert "Personal accounts to 200 per 6 hours" in text
    assert "per hour" not in text


def test_checklist_says_what_an_ecr_pull_through_cache_needs() -> None:
    text = " ".join(_checklist().split())
    assert "pull-through cache" in text
    assert "`ecr:BatchImportUpstreamImage` and `ecr:CreateRepository`" in text


def test_runbook_deletes_legacy_records_with_the_management_token() -> None:
    # The operator token is read-only (consul_objects.operator_rules): a KV delete is a write.
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    paragraph = next(p for p in runbook.split("\n\n") if "consul kv delete" in p)
    assert "management token" in paragraph
    assert "break-glass" in paragraph.lower()
