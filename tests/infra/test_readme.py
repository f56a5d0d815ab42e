"""The README is the operator's contract: its commands and its configuration table stay true."""

from __future__ import annotations

import json
import re

from mesh_stack.config import FIELDS, MeshConfig
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


def test_the_services_example_is_a_valid_configuration() -> None:
    # The README's smallest real example, as it would sit in cdk.json's context.
    section = README.split("### Adding mesh services", 1)[1]
    example = json.loads("{" + section.split("```json\n", 1)[1].split("```", 1)[0] + "}")
    for demo in (True, False):
        config = MeshConfig.from_context({**example, "demo_enabled": demo})
        assert [s.name for s in config.services] == ["orders", "payments"]
        assert intentions(config.services) == [("orders", "payments")]
