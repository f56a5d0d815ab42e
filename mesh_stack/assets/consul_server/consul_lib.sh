#!/usr/bin/env bash
# Functions shared by the Consul server boot scripts. Sourced, never run: every function is
# small enough to be exercised by tests/infra/test_consul_scripts.py with fakes on PATH.
#
# Trust chain of a HashiCorp download (what `install_release` enforces):
#   1. SHA256SUMS.sig must be a valid signature by HashiCorp's release key, identified by its
#      primary fingerprint below (pinned; HashiCorp publishes it on hashicorp.com/security and
#      its own Dockerfiles pin the same value, e.g. hashicorp/docker-consul 0.X/Dockerfile);
#   2. the zip's SHA-256 must equal its line in SHA256SUMS.
# Any failure stops the boot before the binary is installed.
set -euo pipefail
# Without this, `x="$(f)"` runs f with errexit off, and a failing step inside f goes unnoticed.
shopt -s inherit_errexit

HASHICORP_RELEASES="${HASHICORP_RELEASES:-https://releases.hashicorp.com}"
HASHICORP_KEY_FPR="C874011F0AB405110D02105534365D9472D7468F"
# Two independent places that serve HashiCorp's public key; the fingerprint check makes the
# source irrelevant to trust.
HASHICORP_KEY_URLS=(
  "https://www.hashicorp.com/.well-known/pgp-key.txt"
  "https://keyserver.ubuntu.com/pks/lookup?op=get&options=mr&search=0x${HASHICORP_KEY_FPR}"
)

log() {
  printf '%s consul-fleet: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

die() {
  log "FATAL: $*"
  exit 1
}

# fetch URL DEST: HTTPS only, retried, fails on HTTP errors.
fetch() {
  curl --proto '=https' --tlsv1.2 -fsSL --retry 5 --retry-connrefused --retry-delay 2 \
    -o "$2" "$1"
}

# verify_sha256 SUMS_FILE FILE: FILE's SHA-256 must match its line (by base name) in SUMS_FILE.
verify_sha256() {
  local sums="$1" file="$2" name expected actual
  name="$(basename "$file")"
  expected="$(awk -v n="$name" '$2 == n || $2 == "*" n { print $1 }' "$sums")"
  if [[ -z "$expected" ]]; then
    log "no checksum for ${name} in ${sums}"
    return 1
  fi
  if [[ "$(printf '%s\n' "$expected" | wc -l)" -ne 1 ]]; then
    log "more than one checksum for ${name} in ${sums}"
    return 1
  fi
  actual="$(sha256sum "$file" | awk '{ print $1 }')"
  if [[ "$actual" != "$expected" ]]; then
    log "checksum mismatch for ${name}: expected ${expected}, got ${actual}"
    return 1
  fi
  log "checksum ok for ${name}"
}

# verify_signature SUMS_FILE SIG_FILE KEY_FILE: SIG_FILE must be a good signature of SUMS_FILE
# made by the key whose primary fingerprint is HASHICORP_KEY_FPR (a subkey of it may sign).
verify_signature() {
  local sums="$1" sig="$2" key="$3" home status
  home="$(mktemp -d)"
  chmod 700 "$home"
  gpg --batch --quiet --homedir "$home" --import "$key" 2>/dev/null || {
    rm -rf "$home"
    log "cannot import the HashiCorp release key"
    return 1
  }
  # VALIDSIG <sig fpr> <date> <ts> <expire> <ver> <rsvd> <pk algo> <hash> <class> <primary fpr>
  status="$(gpg --batch --homedir "$home" --status-fd 1 --verify "$sig" "$sums" 2>/dev/null || true)"
  rm -rf "$home"
  if ! printf '%s\n' "$status" | awk -v fpr="$HASHICORP_KEY_FPR" \
    '$1 == "[GNUPG:]" && $2 == "VALIDSIG" && $NF == fpr { ok = 1 } END { exit !ok }'; then
    log "SHA256SUMS signature is not a valid signature by ${HASHICORP_KEY_FPR}"
    return 1
  fi
  log "signature ok (key ${HASHICORP_KEY_FPR})"
}

# fetch_release_key DEST: HashiCorp's public key from the first source that answers.
fetch_release_key() {
  local url
  for url in "${HASHICORP_KEY_URLS[@]}"; do
    if fetch "$url" "$1"; then
      return 0
    fi
    log "could not fetch the release key from ${url}"
  done
  return 1
}

# release_arch: HashiCorp's name for this machine's architecture.
release_arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) die "unsupported architecture $(uname -m)" ;;
  esac
}

# version_args PRODUCT: the arguments that make PRODUCT print its version and exit. consul has
# a `version` subcommand; consul-esm has none: it parses flags only (hashicorp/consul-esm
# main.go, `-version`/`-v`), ignores a stray `version` argument and starts the daemon.
version_args() {
  case "$1" in
    consul-esm) echo "-version" ;;
    *) echo "version" ;;
  esac
}

# installed_version_is PRODUCT VERSION DEST_DIR: whether DEST_DIR/PRODUCT reports vVERSION. The
# output is captured first and matched after: `cmd | grep -q` under pipefail fails whenever cmd
# is still writing when grep exits at its first match (SIGPIPE), and reads as "not installed".
installed_version_is() {
  local product="$1" version="$2" dest="$3" output
  [[ -x "${dest}/${product}" ]] || return 1
  output="$(timeout 10 "${dest}/${product}" "$(version_args "$product")" 2>/dev/null)" || return 1
  [[ "$output" == *"v${version}"* ]]
}

# install_release PRODUCT VERSION DEST_DIR: download PRODUCT_VERSION_linux_ARCH.zip, verify it
# (signature, then checksum) and install the PRODUCT binary into DEST_DIR. Idempotent.
install_release() {
  local product="$1" version="$2" dest="$3" arch work zip sums
  if installed_version_is "$product" "$version" "$dest"; then
    log "${product} ${version} already installed"
    return 0
  fi
  arch="$(release_arch)"
  work="$(mktemp -d)"
  zip="${product}_${version}_linux_${arch}.zip"
  sums="${product}_${version}_SHA256SUMS"
  fetch "${HASHICORP_RELEASES}/${product}/${version}/${zip}" "${work}/${zip}"
  fetch "${HASHICORP_RELEASES}/${product}/${version}/${sums}" "${work}/${sums}"
  fetch "${HASHICORP_RELEASES}/${product}/${version}/${sums}.sig" "${work}/${sums}.sig"
  fetch_release_key "${work}/hashicorp.asc" || die "no HashiCorp release key: refusing to install ${product}"
  verify_signature "${work}/${sums}" "${work}/${sums}.sig" "${work}/hashicorp.asc" ||
    die "refusing to install ${product} ${version}: bad signature"
  verify_sha256 "${work}/${sums}" "${work}/${zip}" ||
    die "refusing to install ${product} ${version}: bad checksum"
  python3 -m zipfile -e "${work}/${zip}" "${work}/unpacked"
  install -m 0755 -o root -g root "${work}/unpacked/${product}" "${dest}/${product}"
  rm -rf "$work"
  log "installed ${product} ${version}"
}

# --- Secrets Manager: one writer wins --------------------------------------------------------
#
# Every secret the fleet generates at boot is published as the secret version whose id is a
# fixed, per-secret client request token. PutSecretValue with a ClientRequestToken that already
# names a version is ignored when the value is the same and rejected when it differs ("you
# cannot modify an existing secret version"; AWS Secrets Manager API reference, PutSecretValue,
# ClientRequestToken). So when several servers boot at once, exactly one value becomes that
# version, and everyone - winner, losers, and any later replacement instance - reads it back by
# version id. No locks, no manual step.

# secret_version SECRET_ID VERSION_ID: print that version's SecretString; fail if absent.
secret_version() {
  aws secretsmanager get-secret-value --secret-id "$1" --version-id "$2" \
    --query SecretString --output text 2>/dev/null
}

# publish_once SECRET_ID TOKEN VALUE_FILE: try to make VALUE_FILE's content version TOKEN of
# SECRET_ID; print whichever value holds that version afterwards (ours or an earlier writer's).
publish_once() {
  local secret="$1" token="$2" file="$3" value
  if value="$(secret_version "$secret" "$token")"; then
    printf '%s' "$value"
    return 0
  fi
  if aws secretsmanager put-secret-value --secret-id "$secret" --client-request-token "$token" \
    --secret-string "file://${file}" >/dev/null 2>&1; then
    log "published version ${token} of ${secret}"
  else
    log "another server published ${secret} first; using its value"
  fi
  value="$(secret_version "$secret" "$token")" || die "cannot read version ${token} of ${secret}"
  printf '%s' "$value"
}

# ensure_secret SECRET_ID TOKEN GENERATOR...: the published value, generating it with the
# GENERATOR command (its stdout) only when no server has published one yet.
ensure_secret() {
  local secret="$1" token="$2" value file
  shift 2
  if value="$(secret_version "$secret" "$token")"; then
    printf '%s' "$value"
    return 0
  fi
  file="$(mktemp)"
  chmod 600 "$file"
  value="$("$@")" || die "cannot generate a value for ${secret}"
  printf '%s' "$value" >"$file"
  value="$(publish_once "$secret" "$token" "$file")"
  rm -f "$file"
  printf '%s' "$value"
}

# Every fleet secret starts as the stack's placeholder (consul_fleet.PENDING, "pending: ..."):
# CDK must give it a value, and no secret may be in the template.
PLACEHOLDER_PREFIX="pending:"

# current_secret SECRET_ID: the SecretString of the version labelled AWSCURRENT.
current_secret() {
  aws secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text 2>/dev/null
}

# current_or_bootstrap SECRET_ID TOKEN GENERATOR...: the secret's current value. While it still
# holds the placeholder, the fleet's first value, published once as version TOKEN by whichever
# server is first (ensure_secret); PutSecretValue then moves AWSCURRENT to it (API reference,
# PutSecretValue, VersionStages: "If you don't include VersionStages, Secrets Manager
# automatically moves the staging label AWSCURRENT to this version"). An operator rotates by
# putting a new current version; a server launched after that reads it, never version TOKEN.
current_or_bootstrap() {
  local secret="$1" value
  value="$(current_secret "$secret")" || die "cannot read the current version of ${secret}"
  if [[ "$value" == "${PLACEHOLDER_PREFIX}"* ]]; then
    ensure_secret "$@"
  else
    printf '%s' "$value"
  fi
}

# --- gossip keyring ---------------------------------------------------------------------------
#
# The GossipKey secret holds one key (as the first server generated it) or, during a rotation,
# a JSON list of keys with the primary first: the format of Consul's own keyring files
# `<data_dir>/serf/local.keyring` and `serf/remote.keyring` (hashicorp/consul agent/keyring.go:
# loadKeyringFile reads a JSON list and makes keys[0] the primary; initKeyring writes the
# `encrypt` key there only when the file does not exist yet). A server launched mid-rotation
# starts with every key of the current version, so it decrypts gossip sent with the old primary
# and the new one, and its peers decrypt what it sends.

# gossip_keyring: the secret's value on stdin; on stdout the keyring as a JSON list, primary
# first. Fails on anything that is not a base64 AES-128/192/256 key (memberlist.ValidateKey).
gossip_keyring() {
  python3 -c '
import base64, binascii, json, sys
text = sys.stdin.read().strip()
keys = json.loads(text) if text.startswith("[") else [text]
if not keys or not all(isinstance(k, str) for k in keys):
    sys.exit("gossip keyring must be one key or a JSON list of keys, primary first")
for key in keys:
    try:
        size = len(base64.b64decode(key, validate=True))
    except binascii.Error:
        size = -1
    if size not in (16, 24, 32):
        sys.exit("gossip keyring holds a value that is not a base64 16, 24 or 32 byte key")
print(json.dumps(keys))
'
}

# write_keyrings KEYRING_JSON DATA_DIR OWNER: seed the LAN and WAN keyring files of a fresh data
# directory. An existing file is Consul's, kept up to date by `consul keyring` operations: never
# overwritten (a reboot keeps what the cluster installed since).
write_keyrings() {
  local keyring="$1" data="$2" owner="$3" file
  install -d -m 0700 -o "${owner%%:*}" -g "${owner##*:}" "${data}/serf"
  for file in local remote; do
    [[ -e "${data}/serf/${file}.keyring" ]] && continue
    (umask 077 && printf '%s' "$keyring" >"${data}/serf/${file}.keyring")
    chown "$owner" "${data}/serf/${file}.keyring"
  done
}

# new_uuid: a random UUID (Consul ACL SecretIDs must be UUIDs).
new_uuid() {
  cat /proc/sys/kernel/random/uuid
}

# --- instance metadata (IMDSv2, the only version the launch template allows) ------------------

IMDS="${IMDS:-http://169.254.169.254}"

# imds PATH: one metadata value, e.g. `imds meta-data/local-ipv4`, with a fresh session token.
imds() {
  local token
  token="$(curl -fsS --retry 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
    "${IMDS}/latest/api/token")"
  curl -fsS --retry 3 -H "X-aws-ec2-metadata-token: ${token}" "${IMDS}/latest/$1"
}

# instance_id: this instance's id.
instance_id() {
  imds meta-data/instance-id
}

# private_ip: the primary private IPv4 address of this instance (its first interface).
private_ip() {
  local ip
  ip="$(imds meta-data/local-ipv4)"
  [[ "$ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "IMDS returned no private IPv4 address: '${ip}'"
  printf '%s' "$ip"
}

# is_leader: whether the local agent is the Raft leader (`consul info`, token from the env).
# Its output is matched after it exited (no `| grep -q`, see installed_version_is). A failing
# `consul info` stops the caller: errexit is off inside an `if` condition, and an unanswered
# question must never read as "not the leader".
is_leader() {
  local info
  info="$(consul info)" || die "consul info failed: cannot tell whether this server leads"
  grep -Eq '^[[:space:]]*leader = true$' <<<"$info"
}
