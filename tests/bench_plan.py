"""Benchmark (not a test): wall time and peak memory of `python -m fleet plan STACK --json`.

Each stack runs in a fresh process, as a user or CI would run it, `--runs` times; the table
shows the median wall time and the largest peak RSS. Figures depend on the machine: report
them with the machine they came from, never assert on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.settings import available_stacks  # noqa: E402


def run_once(stack: str) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MiB, and resource count of one plan run."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        argv = [sys.executable, "-m", "fleet", "plan", stack, "--json"]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err)
        # wait4 reaps the child and returns its own resource usage (peak RSS in KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"plan {stack} failed:\n{err.read().decode()}")
        out.seek(0)
        resources = len(json.load(out)["resources"])
    return wall, usage.ru_maxrss / 1024, resources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("stacks", nargs="*", default=available_stacks())
    args = parser.parse_args()
    print(f"python -m fleet plan STACK --json, {args.runs} runs each, {os.cpu_count()} cores")
    print(f"{'stack':16} {'resources':>9} {'wall s (median)':>16} {'peak RSS MiB (max)':>19}")
    for stack in args.stacks:
        results = [run_once(stack) for _ in range(args.runs)]
        walls = [r[0] for r in results]
        peaks = [r[1] for r in results]
        print(f"{stack:16} {results[0][2]:9d} {statistics.median(walls):16.2f} {max(peaks):19.0f}")


if __name__ == "__main__":
    main()
