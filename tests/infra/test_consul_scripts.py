"""The Consul server instance scripts, run for real against fakes of the outside world.

`consul_lib.sh` is sourced by bash with fake `curl` / `aws` commands first on PATH: the checksum
and signature checks run on real files (a fake release, a throwaway GPG key), and the
one-writer secret publication runs against a fake Secrets Manager that keeps the documented
ClientRequestToken semantics (same token + same value: ignored; different value: rejected).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "mesh_stack" / "assets" / "consul_server"
LIB = ASSETS / "consul_lib.sh"
SHELLCHECK = ROOT / ".venv" / "bin" / "shellcheck"
sys.path.insert(0, str(ASSETS))

import consul_admin  # noqa: E402

from tests.consul_double import ConsulDouble  # noqa: E402
from tests.fake_clock import FakeClock, patch_clock  # noqa: E402


def bash(script: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `script` in bash after sourcing consul_lib.sh."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        ["bash", "-c", f'source "{LIB}"\n{script}'],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


# --- shellcheck ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(ASSETS.glob("*.sh")), ids=lambda p: p.name)
def test_every_instance_script_is_shellcheck_clean(script: Path) -> None:
    result = subprocess.run(
        [str(SHELLCHECK), "-x", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_instance_script_is_strict() -> None:
    for script in ASSETS.glob("*.sh"):
        assert "set -euo pipefail" in script.read_text(), script.name


# --- SHA-256 verification --------------------------------------------------------------------


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, Path]:
    """A fake consul_9.9.9_linux_amd64.zip and its SHA256SUMS."""
    archive = tmp_path / "consul_9.9.9_linux_amd64.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("consul", "#!/bin/sh\necho 'Consul v9.9.9'\n")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    sums = tmp_path / "consul_9.9.9_SHA256SUMS"
    sums.write_text(f"{'0' * 64}  consul_9.9.9_linux_arm64.zip\n{digest}  {archive.name}\n")
    return archive, sums


def test_checksum_of_an_untouched_release_passes(release: tuple[Path, Path]) -> None:
    archive, sums = release
    result = bash(f'verify_sha256 "{sums}" "{archive}"')
    assert result.returncode == 0, result.stderr
    assert "checksum ok" in result.stderr


def test_checksum_refuses_a_tampered_zip(release: tuple[Path, Path]) -> None:
    archive, sums = release
    with archive.open("ab") as handle:
        handle.write(b"tampered")
    result = bash(f'verify_sha256 "{sums}" "{archive}"')
    assert result.returncode != 0
    assert "checksum mismatch for consul_9.9.9_linux_amd64.zip" in result.stderr


def test_checksum_refuses_a_zip_missing_from_the_sums(release: tuple[Path, Path]) -> None:
    archive, sums = release
    sums.write_text(sums.read_text().splitlines()[0] + "\n")
    result = bash(f'verify_sha256 "{sums}" "{archive}"')
    assert result.returncode != 0
    assert "no checksum for" in result.stderr


def test_checksum_refuses_ambiguous_sums(release: tuple[Path, Path]) -> None:
    archive, sums = release
    line = sums.read_text().splitlines()[1]
    sums.write_text(f"{line}\n{'1' * 64}  {archive.name}\n")
    result = bash(f'verify_sha256 "{sums}" "{archive}"')
    assert result.returncode != 0
    assert "more than one checksum" in result.stderr


# --- GPG signature and the whole install -----------------------------------------------------

needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")


def make_key(home: Path, name: str) -> tuple[str, Path]:
    """A throwaway signing key: (fingerprint, exported public key)."""
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--homedir", str(home), "--pinentry-mode", "loopback"]
    subprocess.run(
        [
            *gpg,
            "--passphrase",
            "",
            "--quick-gen-key",
            f"{name} <{name}@example.invalid>",
            "ed25519",
            "sign",
            "1d",
        ],
        check=True,
        capture_output=True,
    )
    listing = subprocess.run(
        [*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True, text=True
    ).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    public = home / "public.asc"
    subprocess.run([*gpg, "--armor", "--output", str(public), "--export", fpr], check=True)
    return fpr, public


def sign(home: Path, fpr: str, target: Path) -> Path:
    sig = target.with_name(f"{target.name}.{fpr[-8:]}.sig")
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--homedir",
            str(home),
            "--local-user",
            fpr,
            "--detach-sign",
            "--output",
            str(sig),
            str(target),
        ],
        check=True,
        capture_output=True,
    )
    return sig


@needs_gpg
def test_signature_by_the_pinned_key_passes_and_any_other_key_fails(
    tmp_path: Path, release: tuple[Path, Path]
) -> None:
    _, sums = release
    good_fpr, good_key = make_key(tmp_path / "good", "release")
    evil_fpr, evil_key = make_key(tmp_path / "evil", "attacker")
    good_sig = sign(tmp_path / "good", good_fpr, sums)
    # GIVEN the pinned fingerprint is the release key's
    pin = f'HASHICORP_KEY_FPR="{good_fpr}"'
    # THEN its signature verifies
    ok = bash(f'{pin}; verify_signature "{sums}" "{good_sig}" "{good_key}"')
    assert ok.returncode == 0, ok.stderr
    # AND a signature by another key fails, even when that key is the one supplied
    evil_sig = sign(tmp_path / "evil", evil_fpr, sums)
    bad = bash(f'{pin}; verify_signature "{sums}" "{evil_sig}" "{evil_key}"')
    assert bad.returncode != 0
    assert "is not a valid signature by" in bad.stderr
    # AND a valid signature of different content fails
    sums.write_text(sums.read_text() + "extra\n")
    stale = bash(f'{pin}; verify_signature "{sums}" "{good_sig}" "{good_key}"')
    assert stale.returncode != 0


@pytest.fixture
def fake_curl(tmp_path: Path) -> Path:
    """A `curl` that serves https://releases.example/... and the key URLs from local files."""
    served = tmp_path / "served"
    served.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    executable(
        bindir / "curl",
        textwrap.dedent(f"""\
            #!/usr/bin/env bash
            out=""; url=""
            while [[ $# -gt 0 ]]; do
              case "$1" in -o) out="$2"; shift 2 ;; --proto|--retry|--retry-delay) shift 2 ;;
                -*) shift ;; *) url="$1"; shift ;; esac
            done
            case "$url" in
              *pgp-key.txt|*keyserver*) src="{served}/key.asc" ;;
              *) src="{served}/${{url##*/}}" ;;
            esac
            [[ -f "$src" ]] || exit 22
            cp "$src" "$out"
            """),
    )
    return served


@needs_gpg
@pytest.mark.parametrize("tamper", [False, True])
def test_install_release_installs_only_a_verified_binary(
    tmp_path: Path, release: tuple[Path, Path], fake_curl: Path, tamper: bool
) -> None:
    archive, sums = release
    fpr, key = make_key(tmp_path / "gnupg", "release")
    shutil.copy(key, fake_curl / "key.asc")
    shutil.copy(sums, fake_curl / sums.name)
    shutil.copy(sign(tmp_path / "gnupg", fpr, sums), fake_curl / (sums.name + ".sig"))
    shutil.copy(archive, fake_curl / archive.name)
    if tamper:
        with (fake_curl / archive.name).open("ab") as handle:
            handle.write(b"x")
    dest = tmp_path / "dest"
    dest.mkdir()
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    script = f"""
        HASHICORP_RELEASES=https://releases.example
        HASHICORP_KEY_FPR="{fpr}"
        release_arch() {{ echo amd64; }}
        install() {{ command install -m 0755 "${{@: -2}}"; }}
        install_release consul 9.9.9 "{dest}"
    """
    result = bash(script, env=env)
    if tamper:
        assert result.returncode != 0
        assert "refusing to install consul 9.9.9: bad checksum" in result.stderr
        assert not (dest / "consul").exists()
    else:
        assert result.returncode == 0, result.stderr
        assert (dest / "consul").exists()


# --- one writer wins in Secrets Manager ------------------------------------------------------

FAKE_AWS = """\
#!/usr/bin/env python3
# Fake `aws secretsmanager get-secret-value|put-secret-value`: versions keyed by
# ClientRequestToken, with PutSecretValue's documented idempotency rules, under a file lock.
import fcntl, json, sys
store_path = sys.argv[0] + ".json"
args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(2, len(args) - 1) if args[i].startswith("--")}
with open(store_path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        store = json.load(open(store_path))
    except FileNotFoundError:
        store = {}
    versions = store.setdefault(opt["--secret-id"], {})
    if args[1] == "get-secret-value":
        if opt.get("--version-id") not in versions:
            print("ResourceNotFoundException", file=sys.stderr); sys.exit(254)
        print(versions[opt["--version-id"]]); sys.exit(0)
    if args[1] == "put-secret-value":
        value = open(opt["--secret-string"][len("file://"):]).read()
        token = opt["--client-request-token"]
        if token in versions and versions[token] != value:
            print("ResourceExistsException", file=sys.stderr); sys.exit(254)
        versions[token] = value
        json.dump(store, open(store_path, "w"))
        sys.exit(0)
sys.exit(2)
"""


@pytest.fixture
def fake_aws(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bindir = tmp_path / "awsbin"
    bindir.mkdir()
    executable(bindir / "aws", FAKE_AWS)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, bindir / "aws.json"


def test_concurrent_first_boots_agree_on_one_generated_secret(
    fake_aws: tuple[dict[str, str], Path],
) -> None:
    env, store = fake_aws
    # GIVEN three servers booting at once, each generating its own candidate value
    procs = [
        subprocess.Popen(
            ["bash", "-c", f'source "{LIB}"; ensure_secret arn:gossip tok-1 echo "candidate-{i}"'],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    # THEN every server ends with the same value, and only one version exists
    values = {out for out, _ in outputs}
    assert len(values) == 1, outputs
    assert next(iter(values)).startswith("candidate-")
    assert all(p.returncode == 0 for p in procs)
    assert list(json.loads(store.read_text())["arn:gossip"]) == ["tok-1"]


def test_a_replacement_instance_rereads_instead_of_generating(
    fake_aws: tuple[dict[str, str], Path],
) -> None:
    env, _ = fake_aws
    first = bash("ensure_secret arn:token tok-2 echo original", env=env)
    # WHEN a later instance boots with a generator that would produce something else
    later = bash("ensure_secret arn:token tok-2 false", env=env)
    # THEN it gets the published value and never runs its generator
    assert first.stdout == "original"
    assert later.returncode == 0, later.stderr
    assert later.stdout == "original"


@pytest.mark.parametrize(
    ("generator", "aws", "message"),
    [
        ("false", "fake", "cannot generate a value for arn:gossip"),
        ("echo candidate", "down", "cannot read version tok-4 of arn:gossip"),
    ],
)
def test_boot_stops_instead_of_using_an_empty_secret(
    tmp_path: Path, fake_aws: tuple[dict[str, str], Path], generator: str, aws: str, message: str
) -> None:
    env, _ = fake_aws
    if aws == "down":  # Secrets Manager unreachable: every call fails
        down = tmp_path / "down"
        down.mkdir()
        executable(down / "aws", "#!/bin/sh\nexit 254\n")
        env = {"PATH": f"{down}:{os.environ['PATH']}"}
    result = bash(
        f'gossip="$(ensure_secret arn:gossip tok-4 {generator})"; echo "reached"', env=env
    )
    assert result.returncode != 0
    assert "reached" not in result.stdout
    assert message in result.stderr


def test_publishing_identical_content_twice_is_idempotent(
    tmp_path: Path, fake_aws: tuple[dict[str, str], Path]
) -> None:
    env, store = fake_aws
    cert = tmp_path / "ca.pem"
    cert.write_text("PUBLIC CERT")
    runs = [bash(f'publish_once arn:ca-cert tok-3 "{cert}"', env=env) for _ in range(2)]
    assert [r.stdout for r in runs] == ["PUBLIC CERT", "PUBLIC CERT"]
    assert json.loads(store.read_text())["arn:ca-cert"] == {"tok-3": "PUBLIC CERT"}


# --- ACL bootstrap against a fake Consul ACL API ---------------------------------------------


class FakeAcl:
    """Consul's ACL endpoints as the bootstrap uses them: a missing policy is 403 "ACL not found"
    (older releases; 1.21 answers 404, both are handled), an unknown secret on
    /v1/acl/token/self is 404 "Supplied token does not exist" (agent/acl_endpoint.go
    ACLTokenSelf)."""

    def __init__(self) -> None:
        self.policies: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.writes = 0

    def request(  # noqa: PLR0911 - one branch per endpoint, like a router
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        if method == "GET" and path.startswith("/v1/acl/policy/name/"):
            name = path.rsplit("/", 1)[1]
            return (
                (200, dict(self.policies[name]))
                if name in self.policies
                else (403, "ACL not found")
            )
        if method == "PUT" and path == "/v1/acl/policy":
            if body["Name"] in self.policies:
                return 500, "Invalid Policy: A Policy with Name already exists"
            self.writes += 1
            self.policies[body["Name"]] = {**body, "ID": f"pol-{len(self.policies)}"}
            return 200, self.policies[body["Name"]]
        if method == "PUT" and path.startswith("/v1/acl/policy/"):
            self.writes += 1
            current = next(p for p in self.policies.values() if p["ID"] == path.rsplit("/", 1)[1])
            current.update(body)
            return 200, current
        if method == "GET" and path == "/v1/acl/token/self":
            if token is None:  # the client's default token: the initial management token
                return 200, {"AccessorID": "management", "Policies": [{"Name": "global"}]}
            if token in self.tokens:
                return 200, dict(self.tokens[token])
            return 404, "Supplied token does not exist"
        if method == "PUT" and path == "/v1/acl/token":
            if body["SecretID"] in self.tokens:
                return 500, "Invalid Token: SecretID is already in use"
            self.writes += 1
            self.tokens[body["SecretID"]] = {**body, "AccessorID": f"acc-{len(self.tokens)}"}
            return 200, self.tokens[body["SecretID"]]
        if method == "PUT" and path.startswith("/v1/acl/token/"):
            self.writes += 1
            tok = next(t for t in self.tokens.values() if t["AccessorID"] == path.rsplit("/", 1)[1])
            tok.update(body)
            return 200, tok
        return 400, f"unexpected {method} {path}"


SPECS = [
    (
        "consul-esm",
        'key_prefix "consul-esm/" { policy = "write" }',
        "11111111-2222-3333-4444-555555555555",
    ),
    (
        "consul-server-agent",
        'node_prefix "consul-server-" { policy = "write" }',
        "aaaaaaaa-2222-3333-4444-555555555555",
    ),
]


def test_acl_bootstrap_creates_policies_and_tokens_with_the_published_secret_ids() -> None:
    api = FakeAcl()
    consul_admin.acl_bootstrap(api, SPECS)
    assert {p["Rules"] for p in api.policies.values()} == {rules for _, rules, _ in SPECS}
    for name, _, secret in SPECS:
        assert api.tokens[secret]["Policies"] == [{"Name": name}]


def test_acl_bootstrap_on_every_later_boot_writes_nothing() -> None:
    api = FakeAcl()
    consul_admin.acl_bootstrap(api, SPECS)
    writes = api.writes
    consul_admin.acl_bootstrap(api, SPECS)
    assert api.writes == writes


def test_acl_bootstrap_repairs_drifted_rules_and_unlinked_tokens() -> None:
    api = FakeAcl()
    consul_admin.acl_bootstrap(api, SPECS)
    api.policies["consul-esm"]["Rules"] = 'acl = "write"'
    api.tokens[SPECS[0][2]]["Policies"] = []
    consul_admin.acl_bootstrap(api, SPECS)
    assert api.policies["consul-esm"]["Rules"] == SPECS[0][1]
    assert api.tokens[SPECS[0][2]]["Policies"] == [{"Name": "consul-esm"}]


def test_acl_bootstrap_survives_losing_a_creation_race(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeAcl()
    # GIVEN another server creates the policy and token between our read and our write
    original = api.request
    raced: set[str] = set()

    def racing(
        method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        if method == "PUT" and path in ("/v1/acl/policy", "/v1/acl/token") and path not in raced:
            raced.add(path)
            original(method, path, body, token)
        return original(method, path, body, token)

    api.request = racing  # type: ignore[method-assign]
    monkeypatch.setattr(consul_admin.time, "sleep", lambda _s: None)
    consul_admin.acl_bootstrap(api, SPECS[:1])
    assert len(api.policies) == 1
    assert len(api.tokens) == 1


def test_acl_bootstrap_stops_on_an_unexpected_refusal() -> None:
    class Broken(FakeAcl):
        def request(
            self, method: str, path: str, body: Any = None, token: str | None = None
        ) -> tuple[int, Any]:
            if path == "/v1/acl/token/self":
                return super().request(method, path, body, token)
            return 500, "rpc error: No cluster leader"

    with pytest.raises(consul_admin.AclError, match="reading policy consul-esm: HTTP 500"):
        consul_admin.acl_bootstrap(Broken(), SPECS[:1])


MANAGEMENT = "99999999-8888-7777-6666-555555555555"


def test_acl_bootstrap_waits_for_a_new_leader_to_set_up_acls() -> None:
    # GIVEN a cluster whose leader is elected but has not created the management token yet
    with ConsulDouble(acl_tokens={MANAGEMENT}) as consul:
        consul.acls_not_ready_for(1.5)
        api = consul_admin.HttpsConsul(MANAGEMENT, ca_file=None, base_url=consul.url)
        # WHEN the boot applies the servers' ACLs
        consul_admin.acl_bootstrap(api, SPECS, timeout=60)
        # THEN it waited through token/self's 404s and then created every policy and token
        checks = [r.status for r in consul.requests if r.path == "/v1/acl/token/self"]
        assert checks[0] == 404
        assert set(checks[: checks.index(200)]) == {404}
        assert not [r for r in consul.requests if r.status == 403]
        assert {p["Name"] for p in consul.acl_policies().values()} == {n for n, _, _ in SPECS}
        secrets = {t["SecretID"] for t in consul.acl_tokens().values()}
        assert {secret for _, _, secret in SPECS} <= secrets
        assert consul.internal_errors == []


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """consul_admin's clock and sleep, moved only by the code under test."""
    return patch_clock(monkeypatch, consul_admin)


class UntilInitialized(FakeAcl):
    """A fresh cluster as a server sees it at boot (fake clock): no leader for the first
    `no_leader` seconds, then a leader that creates the initial management token only after
    `not_created` more seconds (agent/consul/leader.go initializeACLs); meanwhile token/self
    cannot find the token (404, agent/acl_endpoint.go ACLTokenSelf)."""

    def __init__(self, clock: FakeClock, *, no_leader: float, not_created: float) -> None:
        super().__init__()
        self.clock = clock
        self.leader_at = no_leader
        self.ready_at = no_leader + not_created
        self.answers: list[tuple[float, int]] = []

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        answer: tuple[int, Any]
        if self.clock.now < self.leader_at:
            answer = 500, "No cluster leader"
        elif self.clock.now < self.ready_at and token is None:
            answer = 404, "Supplied token does not exist"
        else:
            answer = super().request(method, path, body, token)
        if path == "/v1/acl/token/self" and token is None:
            self.answers.append((self.clock.now, answer[0]))
        return answer


def test_acl_bootstrap_waits_while_token_self_cannot_find_the_management_token(
    clock: FakeClock,
) -> None:
    # GIVEN token/self answers 404 for 20 s after the election, as Consul does until
    # initializeACLs has written the initial management token
    api = UntilInitialized(clock, no_leader=2, not_created=20)
    # WHEN a server boots
    consul_admin.acl_bootstrap(api, SPECS, timeout=300)
    # THEN it waited through the 500 and the 404s, then created every policy and token
    statuses = [status for _, status in api.answers]
    assert statuses[0] == 500
    assert 404 in statuses
    assert statuses[-1] == 200
    assert api.answers[-1][0] >= 22
    assert {name for name, _, _ in SPECS} == set(api.policies)
    assert {secret for _, _, secret in SPECS} == set(api.tokens)


def test_acl_bootstrap_names_both_causes_when_the_token_never_appears(
    clock: FakeClock,
) -> None:
    # GIVEN a token Consul never finds (a wrong secret looks exactly like "not created yet")
    api = UntilInitialized(clock, no_leader=0, not_created=10_000)
    with pytest.raises(consul_admin.AclError) as err:
        consul_admin.acl_bootstrap(api, SPECS, timeout=120)
    # THEN it gave up at the deadline with one message that names both causes
    message = str(err.value)
    assert "not found within 120s" in message
    assert "HTTP 404 Supplied token does not exist" in message
    assert "has not created it yet" in message
    assert "does not hold the initial_management token" in message
    assert api.policies == {}
    assert sum(clock.sleeps) == 120


def test_acl_bootstrap_gives_up_at_its_deadline_with_backoff(
    clock: FakeClock,
) -> None:
    with ConsulDouble(acl_tokens={MANAGEMENT}) as consul:
        consul.acls_not_ready_for(3600)
        api = consul_admin.HttpsConsul(MANAGEMENT, ca_file=None, base_url=consul.url)
        with pytest.raises(consul_admin.AclError, match="not found within 120s"):
            consul_admin.acl_bootstrap(api, SPECS, timeout=120)
        assert consul.acl_policies() == {}
    # Backoff doubles up to 15 s and the last pause ends exactly at the deadline
    assert clock.sleeps[:5] == [1.0, 2.0, 4.0, 8.0, 15.0]
    assert max(clock.sleeps) == 15.0
    assert sum(clock.sleeps) == 120.0


def test_acl_bootstrap_fails_at_once_when_acls_are_off() -> None:
    with ConsulDouble(acl_tokens=None) as consul:
        api = consul_admin.HttpsConsul(MANAGEMENT, ca_file=None, base_url=consul.url)
        with pytest.raises(consul_admin.AclError, match="HTTP 401"):
            consul_admin.acl_bootstrap(api, SPECS, timeout=60)
        assert consul.count(path_prefix="/v1/acl/token/self") == 1


# --- health gate -----------------------------------------------------------------------------


def server(name: str, *, voter: bool = True, healthy: bool = True) -> dict[str, Any]:
    return {"Name": name, "Voter": voter, "Healthy": healthy}


HEALTHY = {
    "Healthy": True,
    "FailureTolerance": 1,
    "Servers": [server("consul-server-a"), server("consul-server-b"), server("consul-server-new")],
}


def test_gate_opens_when_the_new_server_is_a_healthy_voter_of_a_full_cluster() -> None:
    ok, why = consul_admin.gate(HEALTHY, "consul-server-new", 3)
    assert ok, why


@pytest.mark.parametrize(
    ("health", "reason"),
    [
        ({**HEALTHY, "Servers": HEALTHY["Servers"][:2]}, "not in the Raft configuration"),
        (
            {
                **HEALTHY,
                "Servers": [*HEALTHY["Servers"][:2], server("consul-server-new", voter=False)],
            },
            "not a voter yet",
        ),
        (
            {
                **HEALTHY,
                "Servers": [*HEALTHY["Servers"][:2], server("consul-server-new", healthy=False)],
            },
            "not healthy yet",
        ),
        (
            {
                **HEALTHY,
                "Servers": [server("consul-server-a", healthy=False), *HEALTHY["Servers"][1:]],
            },
            "2 of 3 voters are healthy",
        ),
        ({**HEALTHY, "Healthy": False}, "cluster unhealthy"),
        ({**HEALTHY, "FailureTolerance": 0}, "failure tolerance 0 < 1"),
        ("No cluster leader", "unexpected autopilot answer"),
    ],
)
def test_gate_stays_closed_while_quorum_would_be_at_risk(health: Any, reason: str) -> None:
    ok, why = consul_admin.gate(health, "consul-server-new", 3)
    assert not ok
    assert reason in why


def test_gate_logs_why_autopilot_answers_429(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN autopilot reports the cluster unhealthy (429, with the reason in the body), then
    # healthy
    sick = {
        "Healthy": False,
        "FailureTolerance": 0,
        "Servers": [
            {**server("consul-server-a"), "SerfStatus": "alive", "LastContact": "0s"},
            {**server("consul-server-b", healthy=False), "SerfStatus": "failed"},
            {**server("consul-server-new"), "SerfStatus": "alive"},
        ],
    }
    answers = [(429, sick), (200, HEALTHY)]

    class Autopilot:
        def request(
            self, method: str, path: str, body: Any = None, token: str | None = None
        ) -> tuple[int, Any]:
            assert path == "/v1/operator/autopilot/health"
            return answers.pop(0)

    # WHEN the gate waits
    assert consul_admin.wait(Autopilot(), "consul-server-new", 3, timeout=60, interval=0)
    # THEN the log names the unhealthy server and what autopilot says about it
    first = capsys.readouterr().out.splitlines()[0]
    assert "2 of 3 voters are healthy" in first
    assert "HTTP 429" in first
    assert "consul-server-b: voter=True healthy=False serf=failed" in first


def test_gate_wait_gives_up_after_the_timeout() -> None:
    class Leaderless:
        def request(
            self, method: str, path: str, body: Any = None, token: str | None = None
        ) -> tuple[int, Any]:
            return 500, "No cluster leader"

    assert consul_admin.wait(Leaderless(), "n", 3, timeout=0, interval=0) is False


# --- rotation: the gossip keyring and the CA are read at their current version ---------------

# The fake above, plus what rotation needs: the AWSCURRENT label (moved to every new version by
# PutSecretValue without VersionStages; API reference, PutSecretValue) and a get-secret-value
# without --version-id that answers the AWSCURRENT version (API reference, GetSecretValue).
FAKE_AWS_CURRENT = FAKE_AWS.replace(
    """        if opt.get("--version-id") not in versions:""",
    """        if "--version-id" not in opt:
            opt["--version-id"] = store.get("current", {}).get(opt["--secret-id"])
        if opt.get("--version-id") not in versions:""",
).replace(
    """        versions[token] = value
""",
    """        versions[token] = value
        store.setdefault("current", {})[opt["--secret-id"]] = token
""",
)
KEY_OLD = "T2xkIGdvc3NpcCBrZXkgb2YgMzIgYnl0ZXMhISEhISE="
KEY_NEW = "TmV3IGdvc3NpcCBrZXkgb2YgMzIgYnl0ZXMhISEhISE="


@pytest.fixture
def secrets(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A fake Secrets Manager where arn:gossip and arn:ca hold the stack's placeholder."""
    from mesh_stack.consul_fleet import PENDING

    bindir = tmp_path / "awsbin"
    bindir.mkdir()
    executable(bindir / "aws", FAKE_AWS_CURRENT)
    store = bindir / "aws.json"
    store.write_text(
        json.dumps(
            {
                "arn:gossip": {"cdk": PENDING},
                "arn:ca": {"cdk": PENDING},
                "current": {"arn:gossip": "cdk", "arn:ca": "cdk"},
            }
        )
    )
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, store


def put_current(store: Path, secret: str, token: str, value: str) -> None:
    """What the operator's `aws secretsmanager put-secret-value` does in the fake."""
    data = json.loads(store.read_text())
    data[secret][token] = value
    data["current"][secret] = token
    store.write_text(json.dumps(data))


BOOT_KEYRING = (
    'keyring="$(current_or_bootstrap arn:gossip consul-fleet-bootstrap-v1-gossip-key '
    f'echo {KEY_OLD})"; gossip_keyring <<<"$keyring"'
)


def test_the_first_boot_publishes_the_gossip_key_and_makes_it_current(
    secrets: tuple[dict[str, str], Path],
) -> None:
    env, store = secrets
    first = bash(BOOT_KEYRING, env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == [KEY_OLD]
    assert json.loads(store.read_text())["current"]["arn:gossip"] == (
        "consul-fleet-bootstrap-v1-gossip-key"
    )


def test_a_server_launched_mid_rotation_starts_with_every_key_of_the_current_keyring(
    secrets: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    # GIVEN a fleet bootstrapped with KEY_OLD, and an operator half-way through a rotation: the
    # new key installed everywhere, and the secret's current version [KEY_NEW, KEY_OLD]
    env, store = secrets
    assert bash(BOOT_KEYRING, env=env).returncode == 0
    put_current(store, "arn:gossip", "rotation-1", json.dumps([KEY_NEW, KEY_OLD]))
    # WHEN a replacement server boots (its generator would make a third key)
    data = tmp_path / "data"
    owner = f"{os.getuid()}:{os.getgid()}"
    result = bash(
        'keyring="$(current_or_bootstrap arn:gossip consul-fleet-bootstrap-v1-gossip-key '
        'echo "never-used")"; keyring="$(gossip_keyring <<<"$keyring")"; '
        f'write_keyrings "$keyring" "{data}" "{owner}"',
        env=env,
    )
    # THEN its LAN and WAN keyring files hold both keys, the new primary first, as Consul reads
    # them (agent/keyring.go loadKeyringFile: a JSON list, keys[0] is the primary)
    assert result.returncode == 0, result.stderr
    for name in ("local", "remote"):
        keyring = data / "serf" / f"{name}.keyring"
        assert json.loads(keyring.read_text()) == [KEY_NEW, KEY_OLD]
        assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "serf").stat().st_mode) == 0o700


def test_a_rebooted_server_keeps_the_keyring_consul_maintains(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "serf").mkdir(parents=True)
    (data / "serf" / "local.keyring").write_text(json.dumps([KEY_NEW]))
    owner = f"{os.getuid()}:{os.getgid()}"
    result = bash(f'write_keyrings \'{json.dumps([KEY_OLD])}\' "{data}" "{owner}"')
    assert result.returncode == 0, result.stderr
    assert json.loads((data / "serf" / "local.keyring").read_text()) == [KEY_NEW]
    assert json.loads((data / "serf" / "remote.keyring").read_text()) == [KEY_OLD]


@pytest.mark.parametrize(
    "value", ["not-base64!", json.dumps([]), json.dumps([KEY_OLD, "c2hvcnQ="]), "pending: x"]
)
def test_fails_when_the_gossip_secret_is_not_a_keyring(value: str) -> None:
    result = bash(f"gossip_keyring <<<'{value}'")
    assert result.returncode != 0
    assert "gossip keyring" in result.stderr


def test_a_secret_still_holding_the_placeholder_is_never_used(
    secrets: tuple[dict[str, str], Path],
) -> None:
    env, _ = secrets
    result = bash("current_or_bootstrap arn:ca tok-ca false", env=env)
    assert result.returncode != 0
    assert "cannot generate a value for arn:ca" in result.stderr


# --- CA rotation: the secret may carry a trust bundle ----------------------------------------


def openssl_ca(work: Path, name: str) -> tuple[str, str]:
    """A self-signed CA like `consul tls ca create` makes: (cert PEM, key PEM)."""
    key, cert = work / f"{name}-key.pem", work / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", f"/CN={name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert.read_text(), key.read_text()


def openssl_leaf(work: Path, ca: tuple[str, str], out: Path) -> None:
    (work / "ca.pem").write_text(ca[0])
    (work / "ca-key.pem").write_text(ca[1])
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(work / "leaf-key.pem"), "-out", str(out), "-days", "30",
         "-subj", "/CN=server.dc1.consul", "-CA", str(work / "ca.pem"),
         "-CAkey", str(work / "ca-key.pem")],
        check=True, capture_output=True,
    )  # fmt: skip


BOOTSTRAP = ASSETS / "consul_bootstrap.sh"


def tls_check(tls: Path, ca_json: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source "{BOOTSTRAP}"; TLS_DIR="{tls}"; tls_matches_ca "$1"', "-",
         json.dumps(ca_json)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_renewal_follows_each_step_of_a_ca_rotation(tmp_path: Path) -> None:
    old, new = openssl_ca(tmp_path, "old"), openssl_ca(tmp_path, "new")
    tls = tmp_path / "tls"
    tls.mkdir()
    openssl_leaf(tmp_path, old, tls / "server.pem")
    (tls / "consul-agent-ca.pem").write_text(old[0])
    # GIVEN a server whose files match the fleet CA: nothing to renew
    assert tls_check(tls, {"cert": old[0], "key": old[1]}).returncode == 0
    # WHEN the operator adds the new CA to the trust bundle: the CA file must change
    step1 = {"cert": old[0], "key": old[1], "bundle": old[0] + new[0]}
    assert tls_check(tls, step1).returncode != 0
    (tls / "consul-agent-ca.pem").write_text(old[0] + new[0])
    assert tls_check(tls, step1).returncode == 0
    # WHEN the new CA signs: the certificate the old one signed must be re-signed
    step2 = {"cert": new[0], "key": new[1], "bundle": old[0] + new[0]}
    assert tls_check(tls, step2).returncode != 0
    openssl_leaf(tmp_path, new, tls / "server.pem")
    assert tls_check(tls, step2).returncode == 0
    # WHEN the old CA leaves the bundle: the CA file shrinks to the new CA
    assert tls_check(tls, {"cert": new[0], "key": new[1]}).returncode != 0
    # AND the trust bundle servers and clients get is the bundle, else the signing cert
    trust = subprocess.run(
        ["bash", "-c", f'source "{BOOTSTRAP}"; ca_trust "$1"', "-", json.dumps(step1)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert trust.stdout == old[0] + new[0]


def test_the_scripts_recognise_the_stacks_placeholder() -> None:
    from mesh_stack.consul_fleet import PENDING

    assert PENDING.startswith("pending:")
    assert 'PLACEHOLDER_PREFIX="pending:"' in LIB.read_text()
