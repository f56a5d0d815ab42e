"""The day-2 procedures in docs/ say what the code does (issue 19, items 5-7).

Each check reads a document and compares it with the code or configuration it describes, so
a procedure that drifts from the code fails here rather than in an operator's shell.
"""

from __future__ import annotations

import re
from pathlib import Path

from mesh_stack.config import ENVOY_SUPPORT, FIELDS
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
RUNBOOK = (ROOT / "docs" / "runbook.md").read_text()
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_design_sections_cited_by_the_docs_exist() -> None:
    # DESIGN.md is the team's brief, not part of the repository: a doc must not send a reader
    # to a section of it.
    for doc in DOCS:
        assert not re.search(r"DESIGN(\.md)? section", doc.read_text()), doc.name


def test_each_dead_letter_queue_has_its_own_alarm_row_and_redrive() -> None:
    table = (ROOT / "docs" / "anti-entropy.md").read_text()
    assert "either DLQ" not in table
    for output in ("RegistrarDeadLetterQueueUrl", "EventRuleDeadLetterQueueUrl"):
        assert output in table
        assert output in RUNBOOK


def test_the_rule_dlq_is_never_redriven_with_start_message_move_task() -> None:
    # StartMessageMoveTask takes only DLQs whose sources are SQS queues (SQS API reference,
    # SourceArn); the rule target's DLQ is fed by EventBridge.
    section = _section(RUNBOOK, "## Inspect and redrive")
    (script,) = [body for lang, body in BLOCK.findall(section) if lang == "sh"]
    for line in script.splitlines():
        if "start-message-move-task" in line:
            assert "RULE_DLQ" not in line, line
    assert re.search(r"tools\.redrive \"\$RULE_DLQ\" \"\$QUEUE\"", script)
    assert (ROOT / "tools" / "redrive.py").exists()


def test_every_lambda_invoke_with_a_payload_passes_it_raw() -> None:
    # AWS CLI v2 reads --payload as base64 unless --cli-binary-format raw-in-base64-out.
    texts = [doc.read_text() for doc in DOCS]
    texts += [p.read_text() for p in (ROOT / "mesh_stack").glob("*.py")]
    commands = [
        re.sub(r"\s+", " ", m.group(0))
        for text in texts
        for m in re.finditer(r"aws lambda invoke[^`]*`", text)
    ]
    assert commands
    for command in commands:
        if "--payload" in command:
            assert "--cli-binary-format raw-in-base64-out" in command, command


def test_the_upgrade_path_fits_the_releases_the_config_accepts() -> None:
    section = _section(OPERATIONS, "## Upgrade Consul without losing quorum")
    assert "one minor release at a time" not in section
    # every accepted Consul release is named, with the patch the dedicated path starts from
    for release in ENVOY_SUPPORT:
        assert f"{release}." in section, release
    assert "1.21.7" in section
    # the Envoy release kept through the upgrade is supported by both ends of it
    (kept,) = re.findall(r"Keep `envoy_version` on (\d+\.\d+)\.x", section)
    for low, high in ENVOY_SUPPORT.values():
        assert _minor(low) <= _minor(kept) <= _minor(high), (kept, low, high)
    # and it tells when to take a new server image
    assert "make refresh-ami" in section


def _gossip_steps() -> list[str]:
    section = _section(OPERATIONS, "## Rotating the fleet's secrets")
    gossip = section[section.index("**Gossip key.**") : section.index("**CA.**")]
    (script,) = [body for lang, body in BLOCK.findall(gossip) if lang == "sh"]
    return [line for line in script.splitlines() if line and not line.startswith("#")]


def test_gossip_rotation_changes_the_secret_before_the_cluster_adds_and_after_it_removes() -> None:
    steps = _gossip_steps()

    def at(pattern: str) -> int:
        (index,) = [i for i, line in enumerate(steps) if re.search(pattern, line)]
        return index

    both_old_first = at(r'put-secret-value .*"\[\\"\$OLD\\", \\"\$NEW\\"\]"')
    both_new_first = at(r'put-secret-value .*"\[\\"\$NEW\\", \\"\$OLD\\"\]"')
    only_new = at(r'put-secret-value .*--secret-string "\$NEW"$')
    install, use, remove = (at(rf"^consul keyring -{op} ") for op in ("install", "use", "remove"))
    # a server launched at any moment starts with every key its peers may send with, and
    # holds the key they will switch to
    assert both_old_first < install < both_new_first < use < only_new < remove


def test_ca_rotation_uses_the_bundle_field_the_bootstrap_reads() -> None:
    bootstrap = ROOT / "mesh_stack" / "assets" / "consul_server" / "consul_bootstrap.sh"
    assert 'd.get("bundle") or d["cert"]' in bootstrap.read_text()
    section = _section(OPERATIONS, "## Rotating the fleet's secrets")
    assert 'c["bundle"]=' in section
    assert 'c.pop("bundle")' in section
    assert "consul_bootstrap.sh renew-cert" in section


def test_documented_config_keys_and_tools_exist() -> None:
    for key in ("consul_objects_generation", "server_ami"):
        assert key in FIELDS
        assert key in OPERATIONS
    for module in set(re.findall(r"python -m tools\.(\w+)", OPERATIONS + RUNBOOK)):
        assert Path(ROOT / "tools" / f"{module}.py").exists(), module


def test_restore_and_teardown_cover_what_an_operator_needs() -> None:
    restore = _section(OPERATIONS, "### Restore")
    assert "sudo -i" in restore
    assert "peers.json" in restore
    assert "consul_objects_generation" in restore
    teardown = _section(OPERATIONS, "## Tearing the stack down")
    assert "make destroy" in teardown
    assert "tools.retained purge" in teardown
    assert "deregister-managed-instance" in teardown
    for kept in ("CertificateAuthority", "ManagementToken", "KMS", "bucket", "log group"):
        assert kept in teardown, kept


def test_lost_quorum_recovery_keeps_the_group_from_replacing_the_survivors() -> None:
    # The group's ELB health check terminates a server ~30 s after its Consul stops (NLB TCP
    # checks, past the launch grace period), deleting the Raft data the recovery needs. The
    # processes are suspended before any server's Consul is stopped, and resumed after.
    start = OPERATIONS.index("**Lost quorum**")
    section = OPERATIONS[start : OPERATIONS.index("\n## ", start)]
    suspend = section.find("aws autoscaling suspend-processes")
    stop = section.find("systemctl stop consul")
    resume = section.find("aws autoscaling resume-processes")
    assert suspend != -1, "the group's processes are never suspended"
    assert stop != -1
    assert resume != -1
    assert suspend < stop < resume
    for command in ("suspend-processes", "resume-processes"):
        line = section[section.index(command) :].split("\n```")[0]
        for process in ("HealthCheck", "ReplaceUnhealthy"):
            assert process in line, (command, process)
    # the group is named by the stack output, not guessed from a substring
    assert "OutputKey=='ConsulServerGroupName'" in section
    assert "contains(AutoScalingGroupName" not in OPERATIONS


def test_the_upgrade_sets_consul_version_durably_in_cdk_json() -> None:
    # A one-off `-c consul_version=...` is gone at the next routine deploy, which would then
    # roll the servers back to the default: a downgrade Consul does not support.
    section = _section(OPERATIONS, "## Upgrade Consul without losing quorum")
    assert not re.search(r"ARGS=\"[^\"]*consul_version", section)
    assert not re.search(r"-c consul_version=\d", section)
    assert re.search(r"git commit[^\n]* cdk\.json", section)
    assert 'cdk["context"]["consul_version"]' in section
    # and "take a snapshot" comes with the command that takes one
    assert "systemctl start consul-snapshot.service" in section


def test_inspecting_a_dlq_does_not_hide_messages_from_the_redrive() -> None:
    # A receive with a visibility timeout hides what it read; the redrive right after (and
    # tools/redrive.py, which stops at the first empty receive) would skip those messages.
    section = _section(RUNBOOK, "## Inspect and redrive")
    (script,) = [body for lang, body in BLOCK.findall(section) if lang == "sh"]
    timeouts = re.findall(r"--visibility-timeout (\d+)", script)
    assert timeouts
    assert set(timeouts) == {"0"}, timeouts


def test_ca_rotation_gates_the_new_signer_on_restarted_clients() -> None:
    # Step 2 is what breaks a client holding only the old CA (servers present new-CA
    # certificates); step 3 is harmless to clients that hold the bundle.
    section = _section(OPERATIONS, "## Rotating the fleet's secrets")
    ca = section[section.index("**CA.**") : section.index("**Registrar and sidecar tokens.**")]
    step2 = ca[ca.index("# 2.") : ca.index("# 3.")]
    assert "restarted after step 1" in step2
    # Run Command is asynchronous: the doc waits for every invocation before the next step
    assert "list-command-invocations" in ca
