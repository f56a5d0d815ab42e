"""Every stack output the README and docs/ name exists in the synthesized template.

The docs reach outputs three ways: the runbook's `out <Name>` helper, a JMESPath query
`OutputKey=='<Name>'`, and prose ("output `<Name>`", "outputs `<A>`, `<B>`"). A name that the
stack declares inside a construct gets a hashed logical ID, and a renamed output breaks
every script that reads it: both fail here. The on-prem path outputs exist only with
`onprem_connectivity=vpn` or `transit_gateway`; those two stacks are synthesized too.
"""

from __future__ import annotations

import re
from typing import Any

import aws_cdk as cdk
import pytest

from mesh_stack.config import MeshConfig
from mesh_stack.outputs import OUTPUTS
from mesh_stack.stack import MeshStack
from tests.conftest import ROOT, cdk_json_context
from tests.docs.test_doc_commands import DOCS
from tests.infra.conftest import Synthesized, synthesized
from tests.infra.test_onprem import DEVICE_IP
from tests.infra.test_readme import readme_services_example

__all__ = ["synthesized"]

_REFERENCES = (
    re.compile(r"\bout ([A-Z][A-Za-z0-9]+)\b"),
    re.compile(r"OutputKey=='([A-Za-z0-9]+)'"),
    re.compile(r"\boutputs? `([A-Z][A-Za-z0-9]+)`"),
    re.compile(r"\boutputs? (?:`[A-Z][A-Za-z0-9]+`, )+`([A-Z][A-Za-z0-9]+)`"),
    # a configured service's output by its pattern and an example: `Service<Name>` (`ServiceOrders`)
    re.compile(r"\boutputs? `[A-Z][A-Za-z]*<[A-Za-z]+>` \(`([A-Z][A-Za-z0-9]+)`\)"),
)
_LISTED = re.compile(r"`([A-Z][A-Za-z0-9]+)`")


def documented_outputs() -> dict[str, set[str]]:
    """Output name -> the docs that name it."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        text = doc.read_text()
        names: set[str] = set()
        for pattern in _REFERENCES:
            for match in pattern.finditer(text):
                listed = [n for n in _LISTED.findall(match.group(0)) if "<" not in n]
                names.update(listed or [match.group(1)])
        for name in names:
            found.setdefault(name, set()).add(str(doc.relative_to(ROOT)))
    return found


def _outputs_of(context: dict[str, object]) -> set[str]:
    app = cdk.App(context=context)
    config = MeshConfig.from_context(context)
    stack = MeshStack(
        app, config.stack_name, config=config, env=cdk.Environment(region=config.region)
    )
    template: dict[str, Any] = app.synth().get_stack_by_name(stack.stack_name).template
    return set(template.get("Outputs", {}))


@pytest.fixture(scope="module")
def template_outputs(synthesized: Synthesized) -> set[str]:
    names: set[str] = set()
    for template in synthesized.templates().values():
        names.update(template.get("Outputs", {}))
    # The README's `services` example, so that the outputs its services get are checked too.
    base = {
        **cdk_json_context(),
        "demo_enabled": False,
        "onprem_cidrs": ["10.20.0.0/16"],
        "services": readme_services_example(),
    }
    names |= _outputs_of(
        {**base, "onprem_connectivity": "vpn", "vpn_customer_gateway_ip": DEVICE_IP}
    )
    names |= _outputs_of(
        {
            **base,
            "onprem_connectivity": "transit_gateway",
            "transit_gateway_id": "tgw-0123456789abcdef0",
        }
    )
    return names


def test_the_docs_name_outputs() -> None:
    names = documented_outputs()
    assert {"RegisterHostCommand", "OperatorTokenSecretArn", "ClusterArn"} <= set(names)
    # docs/services.md names a configured service's output by example
    assert "ServiceOrders" in names


def test_every_output_named_in_the_docs_exists(template_outputs: set[str]) -> None:
    # GIVEN every output name the README and docs/*.md use
    # WHEN the stacks are synthesized (default, vpn and transit gateway paths)
    # THEN each name is an output of the template, under exactly that logical ID
    missing = {
        name: sorted(docs)
        for name, docs in documented_outputs().items()
        if name not in template_outputs
    }
    assert missing == {}, f"outputs named in the docs but not in the template: {missing}"


def test_the_operators_outputs_have_fixed_ids(synthesized: Synthesized) -> None:
    [template] = synthesized.templates().values()
    assert set(OUTPUTS) <= set(template["Outputs"])
    for name in ("ClusterName", "ClusterArn", "RegisterHostCommand", "ActivationFunctionName"):
        assert name in template["Outputs"], name
    # No hashed IDs: an output declared inside a construct would carry an 8-hex suffix.
    hashed = [name for name in template["Outputs"] if re.search(r"[0-9A-F]{8}$", name)]
    assert hashed == []
