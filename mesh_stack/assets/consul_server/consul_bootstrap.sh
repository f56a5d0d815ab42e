#!/usr/bin/env bash
# Boots one Consul server of the fleet, with no manual step and no secret in the user data.
#
#   consul_bootstrap.sh            full boot (run by the user data on every launch)
#   consul_bootstrap.sh renew-cert re-sign this server's certificate (weekly systemd timer)
#
# Inputs, written by the user data (nothing in them is secret):
#   /etc/consul-fleet/fleet.env    region, versions, datacenter, secret ARNs, NLB DNS name, ...
#   /etc/consul-fleet/consul.json  the server configuration (mesh_stack/consul_server_config.py)
#   /etc/consul-fleet/esm.hcl      consul-esm configuration
#   /etc/consul-fleet/policies/    ACL policies of the server agents and of consul-esm
#
# Idempotent: a replaced instance (or this one, rebooted) finds every secret already published
# and re-reads it; it joins the peers it finds by tag, and Raft streams it the cluster state, so
# a fresh root volume loses nothing. Cluster identity (CA, gossip key, tokens) never changes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=consul_lib.sh
source "${HERE}/consul_lib.sh"

FLEET_DIR="${FLEET_DIR:-/etc/consul-fleet}"
CONFIG_DIR=/etc/consul.d
TLS_DIR="${CONFIG_DIR}/tls"
DATA_DIR=/opt/consul/data
ESM_DIR=/etc/consul-esm.d
BIN_DIR=/usr/local/bin
# Version ids of the secrets generated at boot. Fixed strings (32-64 characters, as
# ClientRequestToken requires), so every server asks for the same version: see publish_once.
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

# sign_server_cert CA_JSON: this server's certificate for server.<dc>.consul, the NLB name,
# localhost and 127.0.0.1. The CA key lives only in a private temp dir, removed at once.
sign_server_cert() {
  local work
  work="$(mktemp -d)"
  chmod 700 "$work"
  json_field cert <<<"$1" >"${work}/ca.pem"
  json_field key <<<"$1" >"${work}/ca-key.pem"
  (cd "$work" && "${BIN_DIR}/consul" tls cert create -server -dc "$DATACENTER" \
    -ca ca.pem -key ca-key.pem -days 90 -additional-dnsname "$NLB_DNS_NAME" >/dev/null)
  install -m 0644 -o root -g consul "${work}/ca.pem" "${TLS_DIR}/consul-agent-ca.pem"
  install -m 0644 -o root -g consul "${work}/${DATACENTER}-server-consul-0.pem" "${TLS_DIR}/server.pem"
  install -m 0640 -o root -g consul "${work}/${DATACENTER}-server-consul-0-key.pem" "${TLS_DIR}/server-key.pem"
  rm -rf "$work"
}

write_consul_config() {
  local gossip="$1" management="$2" agent="$3" node
  node="consul-server-$(instance_id)"
  install -m 0640 -o root -g consul "${FLEET_DIR}/consul.json" "${CONFIG_DIR}/consul.json"
  printf '{"node_name": "%s"}\n' "$node" | write_private "${CONFIG_DIR}/40-node.json" root:consul
  python3 -c 'import json, sys; print(json.dumps({"encrypt": sys.stdin.read().strip()}))' \
    <<<"$gossip" | write_private "${CONFIG_DIR}/50-gossip.json" root:consul
  python3 -c '
import json, sys
management, agent = sys.stdin.read().split()
print(json.dumps({"acl": {"tokens": {"initial_management": management, "agent": agent}}}))
' <<<"${management} ${agent}" | write_private "${CONFIG_DIR}/50-acl-tokens.json" root:consul
  "${BIN_DIR}/consul" validate "$CONFIG_DIR" >/dev/null || die "consul validate rejected ${CONFIG_DIR}"
}

# instance_id: this instance's id, through IMDSv2 (the only version the launch template allows).
instance_id() {
  local token
  token="$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
    http://169.254.169.254/latest/api/token)"
  curl -fsS -H "X-aws-ec2-metadata-token: ${token}" \
    http://169.254.169.254/latest/meta-data/instance-id
}

write_units() {
  cat >/etc/systemd/system/consul.service <<EOF
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
  cat >/etc/systemd/system/consul-esm.service <<EOF
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
  cat >/etc/systemd/system/consul-snapshot.service <<EOF
[Unit]
Description=Save a Consul snapshot to S3 (leader only)
After=consul.service

[Service]
Type=oneshot
User=consul
Group=consul
ExecStart=${HERE}/consul_snapshot.sh
EOF
  cat >/etc/systemd/system/consul-snapshot.timer <<EOF
[Unit]
Description=Consul snapshots to S3 every ${SNAPSHOT_INTERVAL_HOURS:-1} h

[Timer]
OnBootSec=15min
OnUnitActiveSec=${SNAPSHOT_INTERVAL_HOURS:-1}h
RandomizedDelaySec=5min

[Install]
WantedBy=timers.target
EOF
  cat >/etc/systemd/system/consul-cert-renew.service <<EOF
[Unit]
Description=Re-sign this Consul server's TLS certificate

[Service]
Type=oneshot
ExecStart=${HERE}/consul_bootstrap.sh renew-cert
EOF
  cat >/etc/systemd/system/consul-cert-renew.timer <<EOF
[Unit]
Description=Weekly renewal of the 90-day Consul server certificate

[Timer]
OnUnitActiveSec=7d
OnBootSec=7d
RandomizedDelaySec=1h

[Install]
WantedBy=timers.target
EOF
  systemctl daemon-reload
}

wait_for_leader() {
  local deadline=$((SECONDS + ${LEADER_TIMEOUT_SECONDS:-900})) leader=""
  while ((SECONDS < deadline)); do
    leader="$(curl -fsS --cacert "${TLS_DIR}/consul-agent-ca.pem" \
      https://127.0.0.1:8501/v1/status/leader 2>/dev/null || true)"
    if [[ -n "$leader" && "$leader" != '""' ]]; then
      log "cluster leader is ${leader}"
      return 0
    fi
    sleep 5
  done
  die "no Consul leader after ${LEADER_TIMEOUT_SECONDS:-900}s"
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
    --management-token-file "${work}/management" \
    --token "consul-server-agent:${FLEET_DIR}/policies/consul-server-agent.hcl:${work}/agent" \
    --token "consul-esm:${FLEET_DIR}/policies/consul-esm.hcl:${work}/esm"
  rm -rf "$work"
}

renew_cert() {
  load_env
  sign_server_cert "$(secret_version "$CA_SECRET_ARN" "$TOKEN_CA")"
  systemctl reload consul
  log "server certificate renewed"
}

main() {
  load_env
  create_users
  install_release consul "$CONSUL_VERSION" "$BIN_DIR"
  install_release consul-esm "$ESM_VERSION" "$BIN_DIR"

  local gossip management agent esm ca_json ca_cert_file
  gossip="$(ensure_secret "$GOSSIP_SECRET_ARN" "$TOKEN_GOSSIP" "${BIN_DIR}/consul" keygen)"
  management="$(ensure_secret "$MANAGEMENT_TOKEN_SECRET_ARN" "$TOKEN_MANAGEMENT" new_uuid)"
  agent="$(ensure_secret "$AGENT_TOKEN_SECRET_ARN" "$TOKEN_AGENT" new_uuid)"
  esm="$(ensure_secret "$ESM_TOKEN_SECRET_ARN" "$TOKEN_ESM" new_uuid)"
  ca_json="$(ensure_secret "$CA_SECRET_ARN" "$TOKEN_CA" generate_ca)"
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
