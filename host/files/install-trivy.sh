#!/bin/bash
# registry-fleet: install the pinned Trivy release (host/scanner_host.py). Usage: ${SCRIPT_NAME} [--prefix DIR]
set -euo pipefail
umask 022
URL=${TRIVY_URL} SHA256=${TRIVY_SHA256}
P=""
fail() { echo "${SCRIPT_NAME}: $*" >&2; exit 1; }
if [ $# = 2 ] && [ "$1" = --prefix ]; then P=$2; elif [ $# != 0 ]; then fail "usage: $0 [--prefix DIR]"; fi
bin=$P${TRIVY_BIN} marker=$P${MARKER_DIR}/$SHA256
[ -e "$marker" ] && [ -x "$bin" ] && exit 0
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
curl -fsSL --proto =https --tlsv1.2 --retry 3 -o "$d/trivy.tar.gz" "$URL"
h=$(sha256sum "$d/trivy.tar.gz") h=${h%% *}
[ "$h" = "$SHA256" ] || fail "$URL has SHA-256 $h, expected $SHA256: not installed"
tar -xzf "$d/trivy.tar.gz" -C "$d" --no-same-owner trivy
install -D -m 0755 "$d/trivy" "$bin"
install -d -m 0755 "$(dirname "$marker")"
touch "$marker"
