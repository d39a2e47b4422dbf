#!/bin/bash
# registry-fleet: the registry's maintenance switch on one host, run through SSM Run Command by
# fleet/maintenance.py; rendered by host/maintenance.py.
#   read-only   write the drop-in that sets the registry's storage.maintenance.readonly, restart
#   read-write  remove it, restart
#   restart     restart (instances cache blob metadata: after GC or a restore every one must)
#   gc          garbage-collect (refused unless read-only); never --delete-untagged (it drops the platform
#               manifests of a tagged multi-arch index: distribution #3004, #3178)
#   gc-dry-run  what garbage-collect would remove, nothing removed
#   retention POLICY_BASE64, retention-dry-run POLICY_BASE64
#               apply the stack's retention policies (storage.retention, JSON) through the local registry's
#               API (python -m retention, from the token service's release); refused while read-only (the
#               registry answers deletes 405): the window runs it before read-only and gc
# The drop-in lives under /etc, so a host that reboots inside a window comes back read-only, not writable.
set -euo pipefail
DROPIN=${DROPIN_FILE}
fail() { echo "registry-maintenance: $*" >&2; exit 1; }
restart() {
  systemctl daemon-reload
  systemctl restart ${UNIT}
  for _ in $(seq 1 60); do
    if systemctl is-active --quiet ${UNIT}; then echo "${UNIT} restarted"; return 0; fi
    sleep 1
  done
  fail "${UNIT} did not come back within 60 s"
}
case "${1:-}" in
  read-only)
    install -d -m 0755 "$(dirname "$DROPIN")"
    printf '%s\n' '[Service]' ${ENVIRONMENT_LINE} >"$DROPIN.tmp"
    chmod 0644 "$DROPIN.tmp"
    mv -f "$DROPIN.tmp" "$DROPIN"
    restart
    ;;
  read-write)
    rm -f "$DROPIN"
    restart
    ;;
  restart)
    restart
    ;;
  gc)
    [ -f "$DROPIN" ] || fail "refusing garbage-collect: this host is not in read-only mode"
    ${REGISTRY_BINARY} garbage-collect ${CONFIG_FILE}
    ;;
  gc-dry-run)
    ${REGISTRY_BINARY} garbage-collect --dry-run ${CONFIG_FILE}
    ;;
  retention|retention-dry-run)
    [ ! -f "$DROPIN" ] || fail "refusing retention: this host is read-only (the registry answers deletes 405)"
    [ -n "${2:-}" ] || fail "usage: registry-maintenance $1 POLICY_BASE64"
    [ -x ${RETENTION_PYTHON} ] || fail "retention needs the token service's release (token mode): no ${RETENTION_PYTHON}"
    policy=$(mktemp)
    trap 'rm -f "$policy"' EXIT
    printf '%s' "$2" | base64 -d >"$policy" || fail "the policy argument is not base64"
    dry=()
    [ "$1" = retention ] || dry=(--dry-run)
    PYTHONPATH=${RETENTION_APP} ${RETENTION_PYTHON} -m retention --policy-file "$policy" \
      --registry-config ${CONFIG_FILE} --registry-url ${REGISTRY_URL} --ca-file ${CA_FILE} \
      --server-name ${SERVER_NAME} --signing-key ${SIGNING_KEY} --signing-cert ${SIGNING_CERT} "${dry[@]}"
    ;;
  *)
    fail "usage: registry-maintenance read-only|read-write|restart|gc|gc-dry-run|retention|retention-dry-run"
    ;;
esac
