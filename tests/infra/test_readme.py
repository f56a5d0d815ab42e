"""The README is the operator's contract: its commands and its configuration table stay true."""

from __future__ import annotations

import re

from mesh_stack.config import FIELDS
from mesh_stack.demo import DEMO_IMAGE
from mesh_stack.ecs_anywhere import INSTALL_SCRIPT
from mesh_stack.image_refs import ENVOY_REPOSITORY, INIT_IMAGE, registry_host
from mesh_stack.ports import CONSUL_GRPC_TLS, CONSUL_HTTPS, ENVOY_INBOUND_PORTS
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
