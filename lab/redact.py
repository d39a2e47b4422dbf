"""Run a lab process with its output passed through a filter that hides secret values.

    LAB_REDACT='["secret", ...]' python -m lab.redact -- COMMAND [ARGS...]

The registry logs each notification endpoint's headers at start (distribution's configureEvents,
at info level), the event receiver's bearer token among them: the lab runs it through this filter,
so its log file (0600 anyway) never holds the token. The secrets come in the environment, which the
command does not inherit. Signals reach the command through the process group the supervisor
signals; this filter keeps reading until the command's output ends, then exits with its status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

ENV_VAR = "LAB_REDACT"
MASK = b"[redacted]"


def redact(line: bytes, secrets: list[bytes]) -> bytes:
    for secret in secrets:
        line = line.replace(secret, MASK)
    return line


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--" or len(argv) < 2:
        print("usage: LAB_REDACT='[...]' python -m lab.redact -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    secrets = sorted((s.encode() for s in json.loads(os.environ.get(ENV_VAR, "[]")) if s), key=len, reverse=True)
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    # Python-level handlers (not SIG_IGN, which the command would inherit): the group's SIGTERM
    # stops the command, and this filter drains its last lines before exiting.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    proc = subprocess.Popen(
        argv[1:], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    out = sys.stdout.buffer
    for line in iter(proc.stdout.readline, b""):
        out.write(redact(line, secrets))
        out.flush()
    code = proc.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
