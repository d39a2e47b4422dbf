#!/bin/bash
# Install Debian packages for the lab and its tests without starting any service (make lab-packages,
# make test-packages). Usage: lab/install-packages.sh PACKAGE...
#
# On a machine booted with systemd, installing docker-registry, nginx or slapd enables and starts their
# system services: an unauthenticated registry on *:5000, nginx on *:80, slapd on *:389. The lab runs
# its own processes on loopback and needs none of them. So:
# - during `apt-get install` a policy-rc.d(8) that answers 101 ("action forbidden") keeps the packages'
#   maintainer scripts (invoke-rc.d, deb-systemd-invoke) from starting, stopping or restarting any
#   service: services the machine already runs are left as they are, even if their package is upgraded.
#   It is created only where none exists (an existing one is left alone) and removed afterwards, also
#   when the install fails or is interrupted.
# - on a machine booted with systemd, the units of packages this run newly installed, which their
#   postinst enabled, are disabled again, so they do not start at the next boot either. Units of
#   packages that were installed before are left as they were.
# POLICY_RC_D and SYSTEMD_BOOTED name the policy file and the directory that says systemd is running
# (tests point them elsewhere).
set -euo pipefail
export LC_ALL=C # one sort order for sort and comm

policy=${POLICY_RC_D:-/usr/sbin/policy-rc.d}
booted=${SYSTEMD_BOOTED:-/run/systemd/system}
if [ $# = 0 ]; then
  echo "usage: $0 PACKAGE..." >&2
  exit 2
fi

created=""
remove_policy() {
  if [ -n "$created" ]; then
    rm -f "$policy"
  fi
}
trap remove_policy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

installed_packages() {
  dpkg-query -W -f '${db:Status-Status} ${binary:Package}\n' | awk '$1 == "installed" { print $2 }' | sort -u
}

# The units a package ships (systemd units, and SysV init scripts, which systemd runs as NAME.service).
units_of() {
  dpkg-query -L "$@" | sed -n -E \
    -e 's#^/(usr/)?lib/systemd/system/([^/@]+\.(service|socket|timer|path))$#\2#p' \
    -e 's#^/etc/init\.d/([^/]+)$#\1.service#p' | sort -u
}

before=$(installed_packages)
if [ -e "$policy" ] || [ -L "$policy" ]; then
  echo "$0: $policy exists; left as it is" >&2
else
  # noclobber: create, never overwrite one that appeared meanwhile.
  (
    set -o noclobber
    printf '#!/bin/sh\n# lab/install-packages.sh (registry-fleet): no service starts during its apt-get install.\nexit 101\n' >"$policy"
  )
  created=1
  chmod 0755 "$policy"
fi

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"

if [ -d "$booted" ]; then
  mapfile -t new < <(comm -13 <(printf '%s\n' "$before") <(installed_packages))
  if [ ${#new[@]} -gt 0 ]; then
    mapfile -t units < <(units_of "${new[@]}")
    for unit in "${units[@]}"; do
      if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        echo "$0: disabling $unit (installed by this run; the lab runs its own processes)" >&2
        systemctl disable --quiet "$unit"
      fi
    done
  fi
fi
