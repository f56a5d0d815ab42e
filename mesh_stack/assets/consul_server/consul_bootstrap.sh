#!/usr/bin/env bash
# Boots one Consul server of the fleet, with no manual step and no secret in the user data.
#
#   consul_bootstrap.sh            full boot (run by the user data on every launch)
#   consul_bootstrap.sh renew-cert re-sign this server's certificate when it expires within
#                                  RENEW_BEFORE_DAYS or no longer follows the CA secret (a CA
#                                  rotation: docs/operations.md), and reload Consul
#                                  (consul-cert-renew.timer: daily, at boot, and after any time
#                                  the instance was off; operators run it during a rotation)
#
# Inputs, written by the user data (nothing in them is secret):
#   /etc/consul-fleet/fleet.env    region, versions, datacenter, secret ARNs, NLB DNS name, ...
#   /etc/consul-fleet/consul.json  the server configuration (mesh_stack/consul_server_config.py)
#   /etc/consul-fleet/esm.hcl      consul-esm configuration
#   /etc/consul-fleet/policies/    ACL policies of the server agents and of consul-esm
#
# Idempotent: a replaced instance (or this one, rebooted) finds every secret already published
# and re-reads it; it joins the peers it finds by tag, and Raft streams it the cluster state, so
# a fresh root volume loses nothing. Tokens never change; the gossip keyring and the CA are
# read at their current version, so a rotation (docs/operations.md) reaches every later launch.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=consul_lib.sh
source "${HERE}/consul_lib.sh"

# Overridable only so that tests/infra/test_consul_scripts.py can run the functions in a sandbox.
FLEET_DIR="${FLEET_DIR:-/etc/consul-fleet}"
CONFIG_DIR="${CONFIG_DIR:-/etc/consul.d}"
TLS_DIR="${CONFIG_DIR}/tls"
DATA_DIR="${DATA_DIR:-/opt/consul/data}"
ESM_DIR="${ESM_DIR:-/etc/consul-esm.d}"
BIN_DIR="${BIN_DIR:-/usr/local/bin}"
SYSTEMD_DIR="${SYSTEMD_DIR:-/etc/systemd/system}"
CONSUL_OWNER="${CONSUL_OWNER:-consul:consul}"
# Server certificates live CERT_DAYS; they are re-signed once fewer than RENEW_BEFORE_DAYS remain.
CERT_DAYS=90
RENEW_BEFORE_DAYS=30
# Version ids of the secrets generated at boot. Fixed strings (32-64 characters, as
# ClientRequestToken requires), so every server asks for the same version: see publish_once.
# The gossip keyring and the CA are read at their current version instead (current_or_bootstrap):
# the bootstrap version only settles who publishes the first value, so an operator can rotate
# them (docs/operations.md) and a server launched mid-rotation gets what its peers use.
TOKEN_GOSSIP="consul-fleet-bootstrap-v1-gossip-key"
TOKEN_MANAGEMENT="consul-fleet-bootstrap-v1-management-token"
TOKEN_AGENT="consul-fleet-bootstrap-v1-agent-token"
TOKEN_ESM="consul-fleet-bootstrap-v1-esm-token"
TOKEN_CA="consul-fleet-bootstrap-v1-certificate-authority"

load_env() {
  # shellcheck source=/dev/null
  source "${FLEET_DIR}/fleet.env"
  : "${AWS_REGION:?}" "${CONSUL_VERSION:?}" "${ESM_VERSION:?}" "${DATACENTER:?}" "${NLB_DNS_NAME:?}"
  : "${GOSSIP_SECRET_ARN:?}" "${MANAGEMENT_TOKEN_SECRET_ARN:?}" "${AGENT_TOKEN_SECRET_ARN:?}"
  : "${ESM_TOKEN_SECRET_ARN:?}" "${CA_SECRET_ARN:?}" "${CA_CERT_SECRET_ARN:?}"
  export AWS_REGION AWS_DEFAULT_REGION="$AWS_REGION"
}

create_users() {
  id consul >/dev/null 2>&1 || useradd --system --home-dir "$DATA_DIR" --shell /sbin/nologin consul
  id consul-esm >/dev/null 2>&1 || useradd --system --no-create-home --shell /sbin/nologin consul-esm
  install -d -m 0750 -o root -g consul "$CONFIG_DIR" "$TLS_DIR"
  install -d -m 0750 -o consul -g consul /opt/consul "$DATA_DIR"
  install -d -m 0750 -o root -g consul-esm "$ESM_DIR"
}

# generate_ca: a new CA as {"cert": PEM, "key": PEM} on stdout.
generate_ca() {
  local work
  work="$(mktemp -d)"
  (cd "$work" && "${BIN_DIR}/consul" tls ca create -days 3650 >/dev/null)
  python3 - "$work" <<'PY'
import glob, json, sys
d = sys.argv[1]
key = glob.glob(f"{d}/*-ca-key.pem")
cert = [p for p in glob.glob(f"{d}/*-ca.pem") if p not in key]
if len(cert) != 1 or len(key) != 1:
    sys.exit(f"consul tls ca create wrote unexpected files: {sorted(glob.glob(d + '/*'))}")
print(json.dumps({"cert": open(cert[0]).read(), "key": open(key[0]).read()}), end="")
PY
  rm -rf "$work"
}

# json_field NAME: read a JSON object on stdin, print its string field NAME.
json_field() {
  python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# write_private FILE OWNER_GROUP: stdin into FILE, mode 0640, created with that mode.
write_private() {
  local tmp
  tmp="$(mktemp "${1}.XXXXXX")"
  chmod 0640 "$tmp"
  cat >"$tmp"
  chown "$2" "$tmp"
  mv -f "$tmp" "$1"
}

# ca_trust CA_JSON: the PEM bundle servers and clients trust. The CA secret is
# {"cert": PEM, "key": PEM} and, during a CA rotation, also "bundle": the old and the new CA
# certificates, so that certificates of either verify while the fleet moves over.
ca_trust() {
  python3 -c 'import json, sys; d = json.load(sys.stdin); sys.stdout.write(d.get("bundle") or d["cert"])' <<<"$1"
}

# sign_server_cert CA_JSON: this server's certificate for server.<dc>.consul, the NLB name,
# localhost and 127.0.0.1, signed by the CA's "cert"/"key"; the trust bundle (ca_trust) becomes
# the agents' CA file. The CA key lives only in a private temp dir, removed at once.
sign_server_cert() {
  local work
  work="$(mktemp -d)"
  chmod 700 "$work"
  json_field cert <<<"$1" >"${work}/ca.pem"
  json_field key <<<"$1" >"${work}/ca-key.pem"
  ca_trust "$1" >"${work}/trust.pem"
  (cd "$work" && "${BIN_DIR}/consul" tls cert create -server -dc "$DATACENTER" \
    -ca ca.pem -key ca-key.pem -days "$CERT_DAYS" -additional-dnsname "$NLB_DNS_NAME" >/dev/null)
  install -m 0644 -o root -g consul "${work}/trust.pem" "${TLS_DIR}/consul-agent-ca.pem"
  install -m 0644 -o root -g consul "${work}/${DATACENTER}-server-consul-0.pem" "${TLS_DIR}/server.pem"
  install -m 0640 -o root -g consul "${work}/${DATACENTER}-server-consul-0-key.pem" "${TLS_DIR}/server-key.pem"
  rm -rf "$work"
}

# tls_matches_ca CA_JSON: whether this server's TLS files follow the CA secret: its CA file is
# the secret's trust bundle and its certificate was signed by the secret's signing "cert".
tls_matches_ca() {
  local work status=0
  work="$(mktemp -d)"
  json_field cert <<<"$1" >"${work}/signing.pem"
  ca_trust "$1" >"${work}/trust.pem"
  if ! cmp -s "${work}/trust.pem" "${TLS_DIR}/consul-agent-ca.pem" ||
    ! openssl verify -CAfile "${work}/signing.pem" "${TLS_DIR}/server.pem" >/dev/null 2>&1; then
    status=1
  fi
  rm -rf "$work"
  return "$status"
}

# cert_expires_within FILE DAYS: true when FILE is missing, unreadable, or its certificate
# expires within DAYS days (`openssl x509 -checkend` exits 0 only if it does not).
cert_expires_within() {
  [[ -r "$1" ]] || return 0
  ! openssl x509 -checkend "$(($2 * 86400))" -noout -in "$1" >/dev/null 2>&1
}

# node_config NODE_NAME IP: this server's own fragment. bind_addr/advertise_addr are pinned to
# the instance's primary private address: left unset, Consul refuses to start as soon as a
# second private IPv4 appears (a docker bridge, a secondary ENI): "Multiple private IPv4
# addresses found. Please configure one with 'bind' and/or 'advertise'" (hashicorp/consul
# agent/config/builder.go, test "advertise address detect multiple v4" in builder_test.go).
node_config() {
  python3 -c 'import json, sys; n, ip = sys.argv[1:]; print(json.dumps({"node_name": n, "bind_addr": ip, "advertise_addr": ip}))' "$1" "$2"
}

write_consul_config() {
  local gossip="$1" management="$2" agent="$3" node ip
  node="consul-server-$(instance_id)"
  ip="$(private_ip)"
  install -m 0640 -o root -g consul "${FLEET_DIR}/consul.json" "${CONFIG_DIR}/consul.json"
  node_config "$node" "$ip" | write_private "${CONFIG_DIR}/40-node.json" root:consul
  python3 -c 'import json, sys; print(json.dumps({"encrypt": sys.stdin.read().strip()}))' \
    <<<"$gossip" | write_private "${CONFIG_DIR}/50-gossip.json" root:consul
  python3 -c '
import json, sys
management, agent = sys.stdin.read().split()
print(json.dumps({"acl": {"tokens": {"initial_management": management, "agent": agent}}}))
' <<<"${management} ${agent}" | write_private "${CONFIG_DIR}/50-acl-tokens.json" root:consul
  "${BIN_DIR}/consul" validate "$CONFIG_DIR" >/dev/null || die "consul validate rejected ${CONFIG_DIR}"
}

write_units() {
  cat >"${SYSTEMD_DIR}/consul.service" <<EOF
[Unit]
Description=Consul server
Wants=network-online.target
After=network-online.target

[Service]
User=consul
Group=consul
ExecStart=${BIN_DIR}/consul agent -config-dir=${CONFIG_DIR}
ExecReload=/bin/kill --signal HUP \$MAINPID
KillMode=process
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
RestartSec=5
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=/opt/consul

[Install]
WantedBy=multi-user.target
EOF
  cat >"${SYSTEMD_DIR}/consul-esm.service" <<EOF
[Unit]
Description=Consul External Service Monitor (health checks of catalog-only registrations)
Requires=consul.service
After=consul.service

[Service]
User=consul-esm
Group=consul-esm
ExecStart=${BIN_DIR}/consul-esm -config-dir=${ESM_DIR}
Restart=always
RestartSec=10
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
EOF
  cat >"${SYSTEMD_DIR}/consul-snapshot.service" <<EOF
[Unit]
Description=Save a Consul snapshot to S3 (leader only)
After=consul.service

[Service]
Type=oneshot
User=consul
Group=consul
ExecStart=${HERE}/consul_snapshot.sh
EOF
  cat >"${SYSTEMD_DIR}/consul-snapshot.timer" <<EOF
[Unit]
Description=Consul snapshots to S3 every ${SNAPSHOT_INTERVAL_HOURS:-1} h

[Timer]
OnBootSec=15min
OnUnitActiveSec=${SNAPSHOT_INTERVAL_HOURS:-1}h
RandomizedDelaySec=5min

[Install]
WantedBy=timers.target
EOF
  cat >"${SYSTEMD_DIR}/consul-cert-renew.service" <<EOF
[Unit]
Description=Re-sign this Consul server's TLS certificate

[Service]
Type=oneshot
ExecStart=${HERE}/consul_bootstrap.sh renew-cert
EOF
  # OnBootSec/OnUnitActiveSec alone restart their count at every boot: a server rebooted
  # weekly for patches would never reach them. A calendar time with Persistent=true runs once a
  # day and, after the instance was off at that time, right at the next boot (systemd.timer(5));
  # OnBootSec also checks at every boot. Each run re-signs only when the certificate is near
  # its end (renew_cert), so running often costs nothing.
  cat >"${SYSTEMD_DIR}/consul-cert-renew.timer" <<EOF
[Unit]
Description=Renew the ${CERT_DAYS}-day Consul server certificate ${RENEW_BEFORE_DAYS} days before it expires

[Timer]
OnCalendar=daily
Persistent=true
OnBootSec=2min
RandomizedDelaySec=10min

[Install]
WantedBy=timers.target
EOF
  systemctl daemon-reload
}

wait_for_leader() {
  local deadline=$((SECONDS + ${LEADER_TIMEOUT_SECONDS:-600})) leader=""
  while ((SECONDS < deadline)); do
    leader="$(curl -fsS --cacert "${TLS_DIR}/consul-agent-ca.pem" \
      https://127.0.0.1:8501/v1/status/leader 2>/dev/null || true)"
    if [[ -n "$leader" && "$leader" != '""' ]]; then
      log "cluster leader is ${leader}"
      return 0
    fi
    sleep 5
  done
  die "no Consul leader after ${LEADER_TIMEOUT_SECONDS:-600}s"
}

# write_esm_config TOKEN: consul-esm's config, token and its own copy of the CA certificate
# (it runs as consul-esm, which may not enter the root:consul 0750 ${CONFIG_DIR}).
write_esm_config() {
  install -m 0640 -o root -g consul-esm "${FLEET_DIR}/esm.hcl" "${ESM_DIR}/esm.hcl"
  install -m 0640 -o root -g consul-esm "${TLS_DIR}/consul-agent-ca.pem" "${ESM_DIR}/consul-agent-ca.pem"
  printf 'token = "%s"\n' "$1" | write_private "${ESM_DIR}/token.hcl" root:consul-esm
}

# apply_acls MANAGEMENT AGENT ESM: create (or repair) the agent and consul-esm policies and the
# tokens whose SecretIDs are the published secrets. Tokens go through files, never argv/env.
apply_acls() {
  local work
  work="$(mktemp -d)"
  chmod 700 "$work"
  printf '%s' "$1" >"${work}/management"
  printf '%s' "$2" >"${work}/agent"
  printf '%s' "$3" >"${work}/esm"
  python3 "${HERE}/consul_admin.py" acl-bootstrap --ca-file "${TLS_DIR}/consul-agent-ca.pem" \
    --timeout "${ACL_TIMEOUT_SECONDS:-300}" --management-token-file "${work}/management" \
    --token "consul-server-agent:${FLEET_DIR}/policies/consul-server-agent.hcl:${work}/agent" \
    --token "consul-esm:${FLEET_DIR}/policies/consul-esm.hcl:${work}/esm"
  rm -rf "$work"
}

renew_cert() {
  load_env
  local ca_json
  ca_json="$(current_secret "$CA_SECRET_ARN")" || die "cannot read the fleet CA"
  if ! cert_expires_within "${TLS_DIR}/server.pem" "$RENEW_BEFORE_DAYS" && tls_matches_ca "$ca_json"; then
    log "server certificate valid for more than ${RENEW_BEFORE_DAYS} days and signed by the current CA: nothing to do"
    return 0
  fi
  sign_server_cert "$ca_json"
  install -m 0640 -o root -g consul-esm "${TLS_DIR}/consul-agent-ca.pem" "${ESM_DIR}/consul-agent-ca.pem"
  # Consul reloads its TLS files on SIGHUP; a stopped agent reads them when it starts.
  systemctl try-reload-or-restart consul.service
  systemctl try-restart consul-esm.service
  log "server certificate renewed for ${CERT_DAYS} days, signed by the current CA"
}

main() {
  load_env
  create_users
  # renew_cert reads certificate dates with openssl (part of the AL2023 AMI; installed if not).
  command -v openssl >/dev/null || dnf install -y -q openssl
  install_release consul "$CONSUL_VERSION" "$BIN_DIR"
  install_release consul-esm "$ESM_VERSION" "$BIN_DIR"

  local keyring gossip management agent esm ca_json ca_cert_file
  keyring="$(current_or_bootstrap "$GOSSIP_SECRET_ARN" "$TOKEN_GOSSIP" "${BIN_DIR}/consul" keygen)"
  keyring="$(gossip_keyring <<<"$keyring")"
  gossip="$(python3 -c 'import json, sys; print(json.load(sys.stdin)[0])' <<<"$keyring")"
  write_keyrings "$keyring" "$DATA_DIR" "$CONSUL_OWNER"
  management="$(ensure_secret "$MANAGEMENT_TOKEN_SECRET_ARN" "$TOKEN_MANAGEMENT" new_uuid)"
  agent="$(ensure_secret "$AGENT_TOKEN_SECRET_ARN" "$TOKEN_AGENT" new_uuid)"
  esm="$(ensure_secret "$ESM_TOKEN_SECRET_ARN" "$TOKEN_ESM" new_uuid)"
  ca_json="$(current_or_bootstrap "$CA_SECRET_ARN" "$TOKEN_CA" generate_ca)"
  # The public half for clients (Envoy, the Lambdas): same bytes from every server, so
  # concurrent publishers send identical requests and Secrets Manager keeps one version.
  ca_cert_file="$(mktemp)"
  json_field cert <<<"$ca_json" >"$ca_cert_file"
  publish_once "$CA_CERT_SECRET_ARN" "$TOKEN_CA" "$ca_cert_file" >/dev/null
  rm -f "$ca_cert_file"

  sign_server_cert "$ca_json"
  write_consul_config "$gossip" "$management" "$agent"
  write_esm_config "$esm"
  write_units
  systemctl enable --now consul.service
  wait_for_leader
  apply_acls "$management" "$agent" "$esm"
  systemctl enable --now consul-esm.service consul-snapshot.timer consul-cert-renew.timer
  log "Consul server ready"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-boot}" in
    boot) main ;;
    renew-cert) renew_cert ;;
    *) die "usage: $0 [boot|renew-cert], got ${1}" ;;
  esac
fi
