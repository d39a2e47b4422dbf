"""Benchmark (not a test): point-in-time restore throughput over 10,000 objects in the lab's S3 (moto over
TLS, the stack's SSE-KMS bucket), in one run.

Writes N objects shaped like a registry's (v1): 80% links (a 71-byte digest under repositories/) and 20%
blobs (--blob-kib each, under blobs/), notes T, then changes every one of them: half overwritten, a quarter
deleted, and a quarter of new keys added; restores to T (copies forward and delete markers) and prints the plan
time (reading the version history), the apply time, objects/s and MB/s copied, and the read-only window's
cost on the lab's two instances (each restarted twice). Figures depend on the machine: report them with it,
never assert on them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.maintenance import LabFleet  # noqa: E402
from fleet.restore import BLOBS, REPOSITORIES, WORKERS, apply_plan, plan_restore  # noqa: E402
from lab.lab import Lab, s3_client  # noqa: E402
from tests.helpers import htpasswd_settings  # noqa: E402

MB = 1_000_000


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--blob-kib", type=int, default=32, help="size of each blob (a fifth of the objects)")
    parser.add_argument("--workers", type=int, default=WORKERS)
    args = parser.parse_args()
    # A SIGTERM (timeout, Ctrl-C from a wrapper) still stops the lab: exit through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    settings = htpasswd_settings()
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        state = Lab(settings, Path(tmp) / "lab").up()
        try:
            s3 = s3_client(state.s3_endpoint, state.ca_file, settings.region)
            n = args.objects
            blob = os.urandom(args.blob_kib * 1024)

            def key(i: int) -> str:
                if i % 5 == 4:
                    return f"{BLOBS}sha256/{i % 256:02x}/{i:064x}/data"
                return f"{REPOSITORIES}bench/r{i % 100}/_manifests/revisions/sha256/{i:064x}/link"

            def put(i: int, generation: int = 1) -> None:
                body = blob if i % 5 == 4 else f"sha256:{i + generation * 10**9:064x}".encode()
                s3.put_object(Bucket=state.bucket, Key=key(i), Body=body)

            started = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(put, range(n)))
            moto = int(state.services["s3"]["pid"])
            print(
                f"wrote {n} objects ({n // 5} blobs of {args.blob_kib} KiB) in {time.monotonic() - started:.1f}s; "
                f"moto RSS {rss_mib(moto):.0f} MiB",
                flush=True,
            )
            time.sleep(1.1)
            t = datetime.now(UTC)
            time.sleep(1.1)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: put(i, 2), [i for i in range(n // 2) if i % 5 != 4]))
                list(pool.map(lambda i: s3.delete_object(Bucket=state.bucket, Key=key(i)), range(n // 2, 3 * n // 4)))
                list(pool.map(put, range(n, n + n // 4)))

            started = time.monotonic()
            plan = plan_restore(s3, state.bucket, t, noncurrent_days=settings.storage.noncurrent_version_days)
            planned = time.monotonic() - started
            print(f"planned in {planned:.1f}s; moto RSS {rss_mib(moto):.0f} MiB", flush=True)
            copies = sum(1 for a in plan.actions if a.copies)
            copied_bytes = plan.bytes_to_copy
            fleet = LabFleet(Path(state.state_dir))
            lines: list[str] = []
            started = time.monotonic()
            fleet.set_read_only(True, lines.append)
            window_in = time.monotonic() - started
            started = time.monotonic()
            apply_plan(s3, plan, lambda line: None, workers=args.workers)
            applied = time.monotonic() - started
            print(f"applied in {applied:.1f}s; moto RSS {rss_mib(moto):.0f} MiB", flush=True)
            started = time.monotonic()
            fleet.set_read_only(False, lines.append)
            window_out = time.monotonic() - started
            again = plan_restore(s3, state.bucket, t)
            print(
                f"plan: {len(plan.actions)} actions ({copies} copies, {len(plan.actions) - copies} delete "
                f"markers) from the history of {n + n // 4} keys in {planned:.1f}s"
            )
            print(
                f"apply ({args.workers} workers): {applied:.1f}s, {len(plan.actions) / applied:.0f} objects/s, "
                f"{copied_bytes / MB / applied:.1f} MB/s copied ({copied_bytes / MB:.0f} MB)"
            )
            print(f"read-only window: {window_in:.1f}s in, {window_out:.1f}s out (two instances, one at a time)")
            print(f"second run: {len(again.actions)} actions; moto peak RSS {rss_mib(moto, 'VmHWM'):.0f} MiB")
        finally:
            Lab.down(Path(tmp) / "lab")


if __name__ == "__main__":
    main()
