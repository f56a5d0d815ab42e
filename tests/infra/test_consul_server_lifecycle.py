"""What keeps a Consul server alive after its first boot, run for real against fakes.

The snapshot job, the version check that makes a re-run of the boot idempotent, certificate
renewal and the systemd units are bash; each test sources or runs the real script with fake
`consul`, `aws`, `curl`, `systemctl` (and a real `openssl`) first on PATH, in a sandbox that
stands in for /etc (the scripts' directories are overridable for exactly this).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.infra.fleet_user_data import user_data_text

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "mesh_stack" / "assets" / "consul_server"
LIB = ASSETS / "consul_lib.sh"
BOOTSTRAP = ASSETS / "consul_bootstrap.sh"
SNAPSHOT = ASSETS / "consul_snapshot.sh"


def executable(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def run(
    args: list[str], *, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    """Fake commands on PATH, a calls log, and the scripts' directories under tmp_path."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    calls.touch()
    # Every fake appends "<name> <args>" to calls.log; the per-test behaviour is set below.
    for name in ("aws", "systemctl"):
        executable(bindir / name, f'#!/usr/bin/env bash\necho "{name} $*" >> "{calls}"\n')
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "fleet.env").write_text(
        textwrap.dedent("""\
            AWS_REGION=us-east-1
            CONSUL_VERSION=1.21.4
            ESM_VERSION=0.10.0
            DATACENTER=dc1
            NLB_DNS_NAME=consul.example.internal
            GOSSIP_SECRET_ARN=arn:gossip
            MANAGEMENT_TOKEN_SECRET_ARN=arn:management
            AGENT_TOKEN_SECRET_ARN=arn:agent
            ESM_TOKEN_SECRET_ARN=arn:esm
            CA_SECRET_ARN=arn:ca
            CA_CERT_SECRET_ARN=arn:ca-cert
            SNAPSHOT_BUCKET=snapshots-bucket
            SNAPSHOT_PREFIX=snapshots/
            SNAPSHOT_INTERVAL_HOURS=1
            KMS_KEY_ARN=arn:key
            METRIC_NAMESPACE=ConsulMesh/Fleet
            FLEET_ID=ConsulFleetABC
            """)
    )
    config = tmp_path / "consul.d"
    (config / "tls").mkdir(parents=True)
    (config / "50-acl-tokens.json").write_text(
        json.dumps({"acl": {"tokens": {"initial_management": "mgmt-token"}}})
    )
    systemd = tmp_path / "systemd"
    systemd.mkdir()
    return {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "BIN": str(bindir),
        "CALLS": str(calls),
        "FLEET_DIR": str(fleet),
        "CONFIG_DIR": str(config),
        "SYSTEMD_DIR": str(systemd),
        "BIN_DIR": str(bindir),
        "ESM_DIR": str(tmp_path / "esm"),
    }


def calls(sandbox: dict[str, str]) -> list[str]:
    return Path(sandbox["CALLS"]).read_text().splitlines()


# --- no `cmd | grep -q` under pipefail -------------------------------------------------------


def shell_sources() -> dict[str, str]:
    """Every shell text an instance runs: the asset scripts and the fleet's user data."""
    sources = {p.name: p.read_text() for p in sorted(ASSETS.glob("*.sh"))}
    sources["user data"] = user_data_text()
    return sources


def test_no_script_pipes_into_an_early_exiting_grep() -> None:
    # `grep -q` (and -m, -l) exits at its first match; under `set -o pipefail` the writer then
    # dies of SIGPIPE and the whole pipeline reads as failed.
    early_exit = re.compile(r"\|\s*grep\s+(-\w*[qml]\w*|--quiet|--max-count)")
    for name, text in shell_sources().items():
        for number, line in enumerate(text.splitlines(), 1):
            code = "" if line.lstrip().startswith("#") else line
            assert not early_exit.search(code), f"{name}:{number}: {line.strip()}"


FAKE_CONSUL_LEADER = """\
    #!/usr/bin/env bash
    echo "consul $*" >> "{calls}"
    case "$1 $2" in
      "info "*)
        # Like `consul info`: the raft section (leader = true) comes before many more lines,
        # written after grep -q would already have exited.
        printf 'agent:\\n\\tcheck_monitors = 0\\nraft:\\n\\tleader = true\\n'
        sleep 0.3
        for i in $(seq 1 5000); do printf '\\tstat_%s = %s\\n' "$i" "$i"; done
        ;;
      "snapshot save") echo snapshot > "$3" ;;
      "snapshot inspect") echo "ID ok" ;;
      *) exit 2 ;;
    esac
    """


def test_the_leader_saves_uploads_and_counts_a_snapshot(sandbox: dict[str, str]) -> None:
    # GIVEN this server is the leader and `consul info` keeps writing after the leader line
    executable(Path(sandbox["BIN"]) / "consul", FAKE_CONSUL_LEADER.format(calls=sandbox["CALLS"]))
    # WHEN the snapshot job runs
    result = run(["bash", str(SNAPSHOT)], env=sandbox)
    # THEN it uploads the snapshot and then counts it in CloudWatch
    assert result.returncode == 0, result.stderr
    assert "not the leader" not in result.stderr
    made = calls(sandbox)
    upload = [c for c in made if c.startswith("aws s3 cp")]
    assert len(upload) == 1
    assert "s3://snapshots-bucket/snapshots/dc1/" in upload[0]
    metric = [c for c in made if c.startswith("aws cloudwatch put-metric-data")]
    assert metric == [
        "aws cloudwatch put-metric-data --namespace ConsulMesh/Fleet --metric-name "
        "SnapshotsSaved --dimensions Fleet=ConsulFleetABC --unit Count --value 1"
    ]
    assert made.index(upload[0]) < made.index(metric[0])


def test_a_follower_saves_nothing_and_counts_nothing(sandbox: dict[str, str]) -> None:
    executable(
        Path(sandbox["BIN"]) / "consul",
        f"""\
        #!/usr/bin/env bash
        echo "consul $*" >> "{sandbox["CALLS"]}"
        printf 'raft:\\n\\tleader = false\\n'
        """,
    )
    result = run(["bash", str(SNAPSHOT)], env=sandbox)
    assert result.returncode == 0, result.stderr
    assert "not the leader" in result.stderr
    assert not [c for c in calls(sandbox) if c.startswith("aws")]


def test_a_snapshot_job_that_cannot_ask_consul_fails_loudly(sandbox: dict[str, str]) -> None:
    # `consul info` failing (agent down, token refused) is an error, never "not the leader"
    executable(Path(sandbox["BIN"]) / "consul", "#!/bin/sh\necho 'Error: 403' >&2\nexit 1\n")
    result = run(["bash", str(SNAPSHOT)], env=sandbox)
    assert result.returncode != 0
    assert not [c for c in calls(sandbox) if c.startswith("aws")]


# --- idempotent install: consul-esm has no `version` subcommand ------------------------------

FAKE_ESM = """\
    #!/usr/bin/env bash
    # consul-esm 0.10.0 parses flags only: -version prints, anything else starts the daemon.
    if [[ "${1:-}" == "-version" || "${1:-}" == "-v" ]]; then
      echo "consul-esm v9.9.9 (abcdef)"
      exit 0
    fi
    sleep 20
    """


def test_an_installed_consul_esm_is_recognised_without_starting_it(
    sandbox: dict[str, str],
) -> None:
    dest = Path(sandbox["BIN_DIR"])
    executable(dest / "consul-esm", FAKE_ESM)
    result = run(
        ["bash", "-c", f'source "{LIB}"; install_release consul-esm 9.9.9 "{dest}"'],
        env=sandbox,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    assert "consul-esm 9.9.9 already installed" in result.stderr


def test_an_installed_consul_is_recognised_by_its_version_subcommand(
    sandbox: dict[str, str],
) -> None:
    dest = Path(sandbox["BIN_DIR"])
    executable(
        dest / "consul",
        '#!/bin/sh\n[ "$1" = version ] && { echo "Consul v9.9.9"; echo "Revision x"; }\n',
    )
    result = run(
        ["bash", "-c", f'source "{LIB}"; installed_version_is consul 9.9.9 "{dest}" && echo same'],
        env=sandbox,
    )
    assert result.stdout.strip() == "same", result.stderr
    other = run(
        ["bash", "-c", f'source "{LIB}"; installed_version_is consul 9.9.8 "{dest}" || echo new'],
        env=sandbox,
    )
    assert other.stdout.strip() == "new"


# --- addresses from IMDSv2 -------------------------------------------------------------------


@pytest.fixture
def imds(sandbox: dict[str, str]) -> dict[str, str]:
    """A fake `curl` that answers IMDSv2 only when given the session token."""
    executable(
        Path(sandbox["BIN"]) / "curl",
        """\
        #!/usr/bin/env bash
        method=GET; token=""; url=""
        while [[ $# -gt 0 ]]; do
          case "$1" in
            -X) method="$2"; shift 2 ;;
            -H) [[ "$2" == X-aws-ec2-metadata-token:* ]] && token="${2#*: }"; shift 2 ;;
            --retry) shift 2 ;;
            -*) shift ;;
            *) url="$1"; shift ;;
          esac
        done
        case "$method $url" in
          "PUT "*/latest/api/token) printf 'session-token' ;;
          "GET "*/latest/meta-data/*)
            [[ "$token" == session-token ]] || exit 22
            case "${url##*/meta-data/}" in
              instance-id) printf 'i-0abc' ;;
              local-ipv4) printf '10.40.3.17' ;;
              *) exit 22 ;;
            esac ;;
          *) exit 22 ;;
        esac
        """,
    )
    return sandbox


def test_consul_binds_and_advertises_the_private_address_from_imdsv2(
    imds: dict[str, str],
) -> None:
    script = f'source "{BOOTSTRAP}"; node_config "consul-server-$(instance_id)" "$(private_ip)"'
    result = run(["bash", "-c", script], env=imds)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "node_name": "consul-server-i-0abc",
        "bind_addr": "10.40.3.17",
        "advertise_addr": "10.40.3.17",
    }


def test_boot_stops_when_imds_has_no_private_address(imds: dict[str, str]) -> None:
    curl = Path(imds["BIN"]) / "curl"
    curl.write_text(curl.read_text().replace("printf '10.40.3.17'", "printf ''"))
    result = run(["bash", "-c", f'source "{BOOTSTRAP}"; ip="$(private_ip)"; echo "$ip"'], env=imds)
    assert result.returncode != 0
    assert "IMDS returned no private IPv4 address" in result.stderr


# --- certificate renewal ---------------------------------------------------------------------


def certificate(path: Path, days_left: float) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server.dc1.consul")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=100))
        .not_valid_after(now + datetime.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


@pytest.fixture
def renewable(sandbox: dict[str, str]) -> dict[str, str]:
    """Fakes for a renewal: Secrets Manager holds the CA (ca.json, written by each test),
    `consul tls cert create` signs."""
    bindir = Path(sandbox["BIN"])
    Path(sandbox["ESM_DIR"]).mkdir()
    ca_json = Path(sandbox["CALLS"]).parent / "ca.json"
    ca_json.write_text(json.dumps({"cert": "CA CERT", "key": "CA KEY"}))
    executable(
        bindir / "aws",
        f"""\
        #!/usr/bin/env bash
        echo "aws $*" >> "{sandbox["CALLS"]}"
        cat "{ca_json}"
        """,
    )
    executable(
        bindir / "consul",
        f"""\
        #!/usr/bin/env bash
        echo "consul $*" >> "{sandbox["CALLS"]}"
        echo "new cert" > dc1-server-consul-0.pem
        echo "new key" > dc1-server-consul-0-key.pem
        """,
    )
    # `install -o root -g consul` needs root and a consul group: keep mode, drop ownership.
    executable(
        bindir / "install",
        '#!/usr/bin/env bash\nargs=(); while [[ $# -gt 0 ]]; do case "$1" in -o|-g) shift 2 ;;'
        ' *) args+=("$1"); shift ;; esac; done\nexec /usr/bin/install "${args[@]}"\n',
    )
    return sandbox


def signed_by_the_current_ca(sandbox: dict[str, str], server_pem: Path) -> None:
    """The fleet CA secret and the trust file name the (self-signed) certificate's issuer."""
    pem = server_pem.read_text()
    (Path(sandbox["CALLS"]).parent / "ca.json").write_text(json.dumps({"cert": pem, "key": "K"}))
    (server_pem.parent / "consul-agent-ca.pem").write_text(pem)


@needs_openssl
@pytest.mark.parametrize(
    ("days_left", "renewed"), [(89, False), (31, False), (29, True), (-2, True)]
)
def test_renewal_re_signs_only_within_thirty_days_of_expiry(
    renewable: dict[str, str], days_left: float, renewed: bool
) -> None:
    server_pem = Path(renewable["CONFIG_DIR"]) / "tls" / "server.pem"
    certificate(server_pem, days_left)
    signed_by_the_current_ca(renewable, server_pem)
    result = run(["bash", str(BOOTSTRAP), "renew-cert"], env=renewable)
    assert result.returncode == 0, result.stderr
    made = calls(renewable)
    if renewed:
        assert server_pem.read_text() == "new cert\n"
        assert any(c.startswith("consul tls cert create -server -dc dc1") for c in made)
        assert "-days 90" in next(c for c in made if c.startswith("consul tls"))
        assert "systemctl try-reload-or-restart consul.service" in made
        assert "renewed for 90 days" in result.stderr
    else:
        # one read of the CA secret (to notice a CA rotation), no signing, no reload
        assert made == [
            "aws secretsmanager get-secret-value --secret-id arn:ca --query SecretString "
            "--output text"
        ]
        assert "nothing to do" in result.stderr


@needs_openssl
def test_renewal_re_signs_a_valid_certificate_the_current_ca_did_not_sign(
    renewable: dict[str, str],
) -> None:
    # GIVEN a certificate with 89 days left, but the CA secret now names another signing CA
    # (step 2 of a CA rotation, docs/operations.md)
    tls = Path(renewable["CONFIG_DIR"]) / "tls"
    certificate(tls / "server.pem", 89)
    other = tls / "other.pem"
    certificate(other, 300)
    signed_by_the_current_ca(renewable, other)
    # WHEN the daily renewal runs  THEN it re-signs, reloads Consul and restarts consul-esm
    result = run(["bash", str(BOOTSTRAP), "renew-cert"], env=renewable)
    assert result.returncode == 0, result.stderr
    assert (tls / "server.pem").read_text() == "new cert\n"
    made = calls(renewable)
    assert "systemctl try-reload-or-restart consul.service" in made
    assert "systemctl try-restart consul-esm.service" in made
    assert (Path(renewable["ESM_DIR"]) / "consul-agent-ca.pem").exists()


@needs_openssl
def test_renewal_re_signs_a_missing_certificate(renewable: dict[str, str]) -> None:
    result = run(["bash", str(BOOTSTRAP), "renew-cert"], env=renewable)
    assert result.returncode == 0, result.stderr
    assert (Path(renewable["CONFIG_DIR"]) / "tls" / "server.pem").read_text() == "new cert\n"


def units(sandbox: dict[str, str]) -> dict[str, str]:
    result = run(["bash", "-c", f'source "{BOOTSTRAP}"; write_units'], env=sandbox)
    assert result.returncode == 0, result.stderr
    return {p.name: p.read_text() for p in Path(sandbox["SYSTEMD_DIR"]).iterdir()}


def timer_settings(text: str) -> dict[str, str]:
    section = text.split("[Timer]", 1)[1].split("\n[", 1)[0]
    pairs = (line.split("=", 1) for line in section.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def test_renewal_timer_survives_reboots(sandbox: dict[str, str]) -> None:
    # GIVEN the units the boot writes
    timer = timer_settings(units(sandbox)["consul-cert-renew.timer"])
    # THEN renewal runs on a calendar, catches up after downtime, and checks at every boot;
    # no monotonic timer whose count restarts at each reboot is the only trigger
    assert timer["OnCalendar"] == "daily"
    assert timer["Persistent"] == "true"
    assert "OnBootSec" in timer
    assert "OnUnitActiveSec" not in timer


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_calendar_expression_is_valid(sandbox: dict[str, str]) -> None:
    expression = timer_settings(units(sandbox)["consul-cert-renew.timer"])["OnCalendar"]
    result = subprocess.run(
        ["systemd-analyze", "calendar", expression], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
