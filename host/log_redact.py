#!/usr/bin/python3 -I
"""registry-fleet-log-redact -- COMMAND [ARGS...]: COMMAND's output with credentials masked.

Why and where it runs: host/boot.py _scan_events_dropin. Standard library only: a host gets this file as it is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

SECRETS_VAR = "REDACT_SECRETS"
MASK = b"[masked]"
CREDENTIAL = re.compile(rb"(authorization\W{0,12}(?:bearer|basic)\s+)([A-Za-z0-9._~+/=-]+)", re.IGNORECASE)


def redact(line: bytes, secrets: list[bytes]) -> bytes:
    """`line` with every credential header's value and every secret replaced by the mask."""
    line = CREDENTIAL.sub(rb"\1" + MASK, line)
    for secret in secrets:
        line = line.replace(secret, MASK)
    return line


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--":
        print("usage: registry-fleet-log-redact -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        listed = json.loads(os.environ.get(SECRETS_VAR) or "[]")
        if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
            raise ValueError("not a list of strings")
    except ValueError as err:
        print(f"registry-fleet-log-redact: {SECRETS_VAR} must be a JSON list of strings ({err})", file=sys.stderr)
        return 2
    secrets = sorted((s.encode() for s in listed if s), key=len, reverse=True)
    env = {k: v for k, v in os.environ.items() if k != SECRETS_VAR}
    # Handlers, not SIG_IGN (inherited): the group's signal stops the command; its last lines still pass.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    try:
        proc = subprocess.Popen(argv[1:], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)  # fmt: skip
    except OSError as err:
        print(f"registry-fleet-log-redact: cannot run {argv[1]}: {err}", file=sys.stderr)
        return 127
    assert proc.stdout is not None
    out = sys.stdout.buffer
    for line in iter(proc.stdout.readline, b""):
        try:
            out.write(redact(line, secrets))
            out.flush()
        except BrokenPipeError:
            pass  # nobody reads: keep draining, so the command never blocks on a full pipe
    code = proc.wait()
    if code < 0:  # killed by a signal: end the same way
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code  # a signal whose default is to go on
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
