#!/usr/bin/env bash
# Saves a Consul snapshot to S3 (systemd timer consul-snapshot.timer, as the `consul` user).
#
# Community Edition has no snapshot agent, so this is it. Only the current leader uploads, so
# the bucket gets one snapshot per interval, not one per server. The snapshot endpoint needs
# `acl:write` (a management-equivalent right: it can mint any token), so a dedicated token
# would reduce nothing; the job uses the management token the agent already reads from its own
# config fragment on this instance, copied into a 0600 temp file for the CLI and removed.
#
# Every snapshot that reached S3 is counted in CloudWatch (METRIC_NAMESPACE, metric
# SnapshotsSaved, dimension Fleet): the alarm of mesh_stack/monitoring.py fires when none landed
# for three intervals, whatever the reason (the job failing, no leader, the timer not running).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=consul_lib.sh
source "${HERE}/consul_lib.sh"
# shellcheck source=/dev/null
source "${FLEET_DIR:-/etc/consul-fleet}/fleet.env"
: "${AWS_REGION:?}" "${SNAPSHOT_BUCKET:?}" "${SNAPSHOT_PREFIX:?}" "${DATACENTER:?}" "${KMS_KEY_ARN:?}"
: "${METRIC_NAMESPACE:?}" "${FLEET_ID:?}"
export AWS_REGION AWS_DEFAULT_REGION="$AWS_REGION"
CONFIG_DIR="${CONFIG_DIR:-/etc/consul.d}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
python3 -c 'import json, sys; print(json.load(sys.stdin)["acl"]["tokens"]["initial_management"], end="")' \
  <"${CONFIG_DIR}/50-acl-tokens.json" >"${work}/token"
export CONSUL_HTTP_ADDR=https://127.0.0.1:8501
export CONSUL_CACERT="${CONFIG_DIR}/tls/consul-agent-ca.pem"
export CONSUL_HTTP_TOKEN_FILE="${work}/token"

if ! is_leader; then
  log "not the leader: no snapshot from this server"
  exit 0
fi
name="$(date -u +%Y%m%dT%H%M%SZ).snap"
consul snapshot save "${work}/${name}" >/dev/null
consul snapshot inspect "${work}/${name}" >/dev/null || die "snapshot ${name} does not verify"
aws s3 cp --only-show-errors --sse aws:kms --sse-kms-key-id "$KMS_KEY_ARN" \
  "${work}/${name}" "s3://${SNAPSHOT_BUCKET}/${SNAPSHOT_PREFIX}${DATACENTER}/${name}"
log "snapshot ${name} saved to s3://${SNAPSHOT_BUCKET}/${SNAPSHOT_PREFIX}${DATACENTER}/"
aws cloudwatch put-metric-data --namespace "$METRIC_NAMESPACE" --metric-name SnapshotsSaved \
  --dimensions "Fleet=${FLEET_ID}" --unit Count --value 1
