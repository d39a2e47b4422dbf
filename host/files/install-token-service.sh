#!/bin/bash
# registry-fleet: install the token service (host/boot.py). Usage: ${SCRIPT_NAME} [--prefix DIR]
set -euo pipefail
umask 022
REGION=${REGION_NAME} BUCKET=${ARTIFACT_BUCKET} KEY=${ARTIFACT_KEY} SHA256=${ARTIFACT_SHA256} INDEX=${PIP_INDEX_URL}
P=${INSTALL_DIR}
fail() { echo "${SCRIPT_NAME}: $*" >&2; exit 1; }
if [ $# = 2 ] && [ "$1" = --prefix ]; then P=$2; elif [ $# != 0 ]; then fail "usage: $0 [--prefix DIR]"; fi
case $P in /*) ;; *) fail "--prefix must be an absolute path" ;; esac
install -d -m 0755 "$P"
exec 9<"$P"
flock 9
r=$P/releases/$SHA256 t=""
trap '[ -z "$t" ] || rm -f "$t"; [ -e "$r/${RELEASE_MARKER}" ] || rm -rf "$r"' EXIT
if [ ! -e "$r/${RELEASE_MARKER}" ]; then
  install -d -m 0755 "$P/releases"
  rm -rf "$r"
  t=$(mktemp "$P/.artifact.XXXXXX")
  aws --region "$REGION" s3api get-object --bucket "$BUCKET" --key "$KEY" "$t" >/dev/null
  h=$(sha256sum "$t") h=${h%% *}
  [ "$h" = "$SHA256" ] || fail "s3://$BUCKET/$KEY has SHA-256 $h, expected $SHA256: not installed"
  mkdir -p "$r/app"
  tar -xzf "$t" -C "$r/app" --no-same-owner
  python3 -m venv "$r/venv"
  "$r/venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir --require-hashes --only-binary=:all: \
    --no-deps --index-url "$INDEX" -r "$r/app/auth/requirements.lock"
  PYTHONPATH=$r/app "$r/venv/bin/python" -c "import ${IMPORT_CHECK}"
  touch "$r/${RELEASE_MARKER}"
fi
ln -sfn "releases/$SHA256" "$P/.current.new"
mv -T "$P/.current.new" "$P/current"
