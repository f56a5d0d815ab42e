"""The README is the operator's contract: its commands and its configuration table stay true."""

from __future__ import annotations

import re

from mesh_stack.config import FIELDS
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
