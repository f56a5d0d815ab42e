"""A server's boot as CloudFormation sees it: every outcome is signalled, within the timeout.

The synthesized user data is run for real in a sandbox: /etc, /opt and /var/log are moved under
tmp_path, and fake `curl` (IMDSv2), `aws` (S3, CloudFormation signals) and `sleep` come first on
PATH. The scripts it downloads are stand-ins that succeed or fail on demand.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mesh_stack.consul_fleet import BOOT, JOIN_TAG_KEY, METRIC_NAMESPACE
from tests.infra.fleet_user_data import fleet_template, user_data_text


def executable(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def scripts_zip(*, bootstrap_exit: int = 0, gate_exit: int = 0) -> bytes:
    """Stand-ins for the boot scripts asset: they log their arguments and exit as told."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "consul_bootstrap.sh",
            f'#!/bin/sh\necho "consul_bootstrap.sh $*" >> "$CALLS"\nexit {bootstrap_exit}\n',
        )
        archive.writestr(
            "consul_admin.py",
            "import os, sys\n"
            "open(os.environ['CALLS'], 'a').write('consul_admin.py ' + ' '.join(sys.argv[1:]) + "
            "'\\n')\n"
            f"sys.exit({gate_exit})\n",
        )
    return buffer.getvalue()


def boot(
    tmp_path: Path,
    *,
    copy_failures: int = 0,
    payload: bytes | None = None,
    signal_refused: bool = False,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the user data; the S3 copy fails `copy_failures` times, then delivers `payload`.

    signal_refused: SignalResource fails, as it does outside a stack operation (a
    replacement launched by the group on its own, an instance refresh).
    """
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    calls.touch()
    (tmp_path / "scripts.zip").write_bytes(scripts_zip() if payload is None else payload)
    executable(
        bindir / "curl",
        """\
        #!/usr/bin/env bash
        case "$*" in
          *"-X PUT"*/latest/api/token*) printf 'imds-token' ;;
          *"X-aws-ec2-metadata-token: imds-token"*/meta-data/instance-id*) printf 'i-0boot' ;;
          *) exit 22 ;;
        esac
        """,
    )
    executable(
        bindir / "aws",
        f"""\
        #!/usr/bin/env bash
        echo "aws $*" >> "{calls}"
        if [[ "$1 $2" == "s3 cp" ]]; then
          count=$(grep -c '^aws s3 cp' "{calls}")
          if (( count <= {copy_failures} )); then
            echo "download failed: AccessDenied" >&2; exit 1
          fi
          cp "{tmp_path}/scripts.zip" "${{@: -1}}"
        fi
        if [[ "$1 $2" == "cloudformation signal-resource" && "{signal_refused}" == True ]]; then
          echo "ValidationError: ... is in CREATE_COMPLETE state and cannot be signaled" >&2
          exit 254
        fi
        """,
    )
    executable(bindir / "sleep", f'#!/bin/sh\necho "sleep $*" >> "{calls}"\n')
    text = user_data_text()
    for real, fake in (
        ("/etc/consul-fleet", tmp_path / "etc"),
        ("/opt/consul-fleet", tmp_path / "opt"),
        ("/var/log/consul-fleet-boot.log", tmp_path / "boot.log"),
    ):
        text = text.replace(real, str(fake))
    script = tmp_path / "user-data.sh"
    script.write_text(text)
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "CALLS": str(calls)},
        timeout=60,
        check=False,
    )
    return result, calls.read_text().splitlines()


def signals(calls: list[str]) -> list[str]:
    return [
        re.sub(r".*--status (\w+).*", r"\1", c)
        for c in calls
        if c.startswith("aws cloudformation signal-resource")
    ]


def marked_unhealthy(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("aws autoscaling set-instance-health")]


def test_a_healthy_boot_signals_success_once(tmp_path: Path) -> None:
    result, calls = boot(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert signals(calls) == ["SUCCESS"]
    assert marked_unhealthy(calls) == []
    (signal,) = [c for c in calls if c.startswith("aws cloudformation signal-resource")]
    assert "--unique-id i-0boot" in signal
    gate = next(c for c in calls if c.startswith("consul_admin.py"))
    assert gate == f"consul_admin.py health-gate consul-server-i-0boot 3 {BOOT.health_gate}"


def test_the_scripts_download_is_retried_with_backoff(tmp_path: Path) -> None:
    # GIVEN S3 refuses the first two copies (a new instance profile still propagating)
    result, calls = boot(tmp_path, copy_failures=2)
    # THEN the third attempt gets the scripts and the boot succeeds
    assert result.returncode == 0, result.stdout + result.stderr
    assert len([c for c in calls if c.startswith("aws s3 cp")]) == 3
    assert [c for c in calls if c.startswith("sleep")] == ["sleep 2", "sleep 4"]
    assert signals(calls) == ["SUCCESS"]


@pytest.mark.parametrize(
    ("case", "options"),
    [
        ("S3 never answers", {"copy_failures": 99}),
        ("the download is not a zip", {"payload": b"<Error>AccessDenied</Error>"}),
        ("the bootstrap fails", {"payload": scripts_zip(bootstrap_exit=3)}),
        ("the health gate stays closed", {"payload": scripts_zip(gate_exit=1)}),
    ],
)
def test_every_failed_boot_signals_failure_at_once(
    tmp_path: Path, case: str, options: dict[str, Any]
) -> None:
    result, calls = boot(tmp_path, **options)
    assert result.returncode != 0, case
    assert signals(calls) == ["FAILURE"], f"{case}: {calls}"
    # and the group replaces the instance instead of keeping a half-configured server
    (mark,) = marked_unhealthy(calls)
    assert "--instance-id i-0boot --health-status Unhealthy" in mark
    assert "--no-should-respect-grace-period" in mark
    if case == "S3 never answers":
        assert len([c for c in calls if c.startswith("aws s3 cp")]) == BOOT.copy_attempts
        assert not any(c.startswith("consul_bootstrap.sh") for c in calls)


@pytest.mark.parametrize(
    ("case", "options"),
    [
        ("the bootstrap fails", {"payload": scripts_zip(bootstrap_exit=3)}),
        ("the download is not a zip", {"payload": b"<Error>AccessDenied</Error>"}),
    ],
)
def test_a_failed_boot_outside_a_stack_operation_is_still_taken_out_of_service(
    tmp_path: Path, case: str, options: dict[str, Any]
) -> None:
    # GIVEN the group launched the server on its own (no CloudFormation operation waits for a
    # signal, so SignalResource is refused), WHEN its boot fails
    result, calls = boot(tmp_path, signal_refused=True, **options)
    # THEN it still marks itself unhealthy, so the group replaces it
    assert result.returncode != 0, case
    assert len(marked_unhealthy(calls)) == 1, f"{case}: {calls}"


def test_only_this_fleets_group_may_be_told_an_instance_is_unhealthy() -> None:
    template = fleet_template()
    statements = [
        s
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::Policy"
        for s in r["Properties"]["PolicyDocument"]["Statement"]
        if "autoscaling:SetInstanceHealth" in json.dumps(s["Action"])
    ]
    (statement,) = statements
    assert statement["Action"] == "autoscaling:SetInstanceHealth"
    (condition,) = statement["Condition"]["StringEquals"].items()
    assert condition[0] == f"autoscaling:ResourceTag/{JOIN_TAG_KEY}"
    (asg,) = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"
    ]
    tags = {t["Key"]: t["Value"] for t in asg["Properties"]["Tags"]}
    assert tags[JOIN_TAG_KEY] == condition[1]


# --- the worst case fits inside the signal timeout -------------------------------------------


def iso_minutes(value: str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", value)
    assert match, value
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def test_the_slowest_possible_boot_still_signals_before_cloudformation_gives_up() -> None:
    template = fleet_template()
    (asg,) = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"
    ]
    creation = iso_minutes(asg["CreationPolicy"]["ResourceSignal"]["Timeout"])
    update = iso_minutes(asg["UpdatePolicy"]["AutoScalingRollingUpdate"]["PauseTime"])
    text = user_data_text()

    def number(pattern: str) -> int:
        match = re.search(pattern, text, re.MULTILINE)
        assert match is not None, pattern
        return int(match.group(1))

    # Every bound the user data enforces, read back from the text an instance runs
    leader = number(r"^LEADER_TIMEOUT_SECONDS=(\d+)$")
    acl = number(r"^ACL_TIMEOUT_SECONDS=(\d+)$")
    bootstrap = number(r"timeout (\d+) \S+/consul_bootstrap.sh")
    gate = number(r"timeout (\d+) python3 \S+/consul_admin.py health-gate")
    attempts = number(r"seq 1 (\d+)\); do timeout \d+ aws s3 cp")
    per_attempt = number(r"seq 1 \d+\); do timeout (\d+) aws s3 cp")
    pauses = sum(2**n for n in range(1, attempts))
    signal = number(r"signal\(\) \{ timeout (\d+) aws")
    metadata = 2 * 4 * 5  # two curl calls of at most 4 tries x --max-time 5
    assert "--retry 3 --retry-connrefused --max-time 5" in text
    # The bootstrap's own waits leave it time for the installs
    assert leader + acl + 4 * 60 <= bootstrap
    worst = metadata + attempts * per_attempt + pauses + bootstrap + gate + signal
    assert worst < creation, f"worst case {worst}s >= signal timeout {creation}s"
    assert worst < update
    print(f"worst-case boot {worst}s of {creation}s")


def test_the_servers_launch_only_after_their_nat_routes_exist() -> None:
    template = fleet_template()
    resources = template["Resources"]
    private_tables = {
        assoc["Properties"]["RouteTableId"]["Ref"]
        for assoc in resources.values()
        if assoc["Type"] == "AWS::EC2::SubnetRouteTableAssociation"
        and "Private" in assoc["Properties"]["SubnetId"]["Ref"]
    }
    nat_routes = {
        name
        for name, r in resources.items()
        if r["Type"] == "AWS::EC2::Route"
        and "NatGatewayId" in r["Properties"]
        and r["Properties"]["RouteTableId"]["Ref"] in private_tables
    }
    assert len(nat_routes) == 3
    (asg,) = [r for r in resources.values() if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"]
    assert nat_routes <= set(asg.get("DependsOn", []))


def test_the_servers_may_put_metrics_only_in_their_own_namespace() -> None:
    template = fleet_template()
    statements = [
        s
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::Policy"
        for s in r["Properties"]["PolicyDocument"]["Statement"]
        if "cloudwatch:PutMetricData" in str(s["Action"])
    ]
    assert statements == [
        {
            "Action": "cloudwatch:PutMetricData",
            "Condition": {"StringEquals": {"cloudwatch:namespace": METRIC_NAMESPACE}},
            "Effect": "Allow",
            "Resource": "*",
        }
    ]
