#!/bin/bash
# registry-fleet: write a unit's secrets (default ${DEFAULT_UNIT}); rendered by host/boot.py.
set -euo pipefail
umask 077
REGION=${REGION_NAME}
tmp=""
trap '[ -z "$tmp" ] || rm -f "$tmp"' EXIT
fail() { echo "${SCRIPT_NAME}: $*" >&2; exit 1; }
fetch() {
  aws --region "$REGION" secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text
}
write_secret() {
  local arn=$1 path=$2 mode=$3 owner=$4 group=$5 dir
  dir=$(dirname "$path")
  [ -d "$dir" ] || install -d -m 0750 -o root -g "$group" "$dir"
  tmp=$(mktemp "$dir/.registry-fleet.XXXXXX")
  fetch "$arn" >"$tmp"
  if [ ! -s "$tmp" ] || [ "$(cat "$tmp")" = None ]; then fail "secret $arn has no SecretString"; fi
  chown "$owner:$group" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
  tmp=""
}
write_http_secret() {
  local secret
  install -d -m 0700 -o root -g root ${ENV_DIR}
  secret=$(fetch "$1")
  if [ -z "$secret" ] || [ "$secret" = None ]; then fail "secret $1 has no SecretString"; fi
  case "$secret" in
    *[!A-Za-z0-9+/=_.-]*) fail "secret $1 must hold only [A-Za-z0-9+/=_.-] to be safe in an EnvironmentFile" ;;
  esac
  tmp=$(mktemp ${ENV_DIR}/.registry.env.XXXXXX)
  printf 'REGISTRY_HTTP_SECRET=%s\n' "$secret" >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" ${ENV_FILE}
  tmp=""
}
write_notifications() {
  local token
  token=$(fetch "$1")
  case "$token" in
    '' | None | *[!A-Za-z0-9]*) fail "secret $1 must hold a token of [A-Za-z0-9]" ;;
  esac
  tmp=$(mktemp ${ENV_DIR}/.registry.env.XXXXXX)
  cat ${ENV_FILE} >"$tmp"
  printf "%s='%s'\n" "$2" "${3//@BEARER@/$token}" >>"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" ${ENV_FILE}
  tmp=""
}
