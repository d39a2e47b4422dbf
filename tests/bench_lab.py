"""Benchmark (not a test): push and pull a 200 MB image through the lab, in one run.

Prints push and pull MB/s through the load balancer (nginx), the same transfer straight to one
registry instance and the ratio (what the load balancer costs), the same bytes PUT and GET
straight to S3 (moto) as the baseline and the ratios, the share of blob bytes on pull that the
CDN edge served rather than the registry, the lab's start time, and each process's peak memory.
Figures depend on the machine: report them with the machine, never assert on them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.settings import load_stack_settings  # noqa: E402
from lab.demo import edge_bytes  # noqa: E402
from lab.image import build_image, layer_digests, skopeo_copy  # noqa: E402
from lab.lab import INSTANCES, Lab, s3_client  # noqa: E402

MB = 1_000_000


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set, in MiB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--size-mb", type=int, default=200)
    args = parser.parse_args()
    size = args.size_mb * MB
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        state = Lab(load_stack_settings(args.stack), work / "lab").up()
        start_s = time.perf_counter() - t0
        try:
            source = build_image(work / "img", "big", [{"layer.bin": size}])
            layer = layer_digests(work / "img", "big")[0]
            blob = (work / "img" / "blobs" / "sha256" / layer.split(":")[1]).read_bytes()
            user = f"{state.username}:{state.password}"
            host = state.registry_url.removeprefix("https://")
            repo = f"{state.namespace}/bench-big"  # where the lab's demo account may push

            t = time.perf_counter()
            skopeo_copy(source, f"docker://{host}/{repo}:1", state.cert_dir, user)
            push_s = time.perf_counter() - t
            before = edge_bytes(state)
            t = time.perf_counter()
            skopeo_copy(f"docker://{host}/{repo}:1", f"oci:{work / 'back'}:1", state.cert_dir, user)
            pull_s = time.perf_counter() - t
            via_edge = edge_bytes(state) - before
            assert layer_digests(work / "back", "1") == [layer]

            # The same transfer straight to one registry instance (tokens still come from the realm), with an
            # image of fresh bytes: a blob the registry already holds would not be sent again.
            other = build_image(work / "img2", "big", [{"layer.bin": size}])
            layer2 = layer_digests(work / "img2", "big")[0]
            direct = f"127.0.0.1:{state.service(INSTANCES[0]).ports['https']}"
            t = time.perf_counter()
            skopeo_copy(other, f"docker://{direct}/{repo}:2", state.cert_dir, user)
            direct_push_s = time.perf_counter() - t
            t = time.perf_counter()
            skopeo_copy(f"docker://{direct}/{repo}:2", f"oci:{work / 'back-direct'}:2", state.cert_dir, user)
            direct_pull_s = time.perf_counter() - t
            assert layer_digests(work / "back-direct", "2") == [layer2]

            s3 = s3_client(state.s3_endpoint, state.ca_file, load_stack_settings(args.stack).region)
            t = time.perf_counter()
            s3.put_object(Bucket=state.bucket, Key="bench/baseline", Body=blob)
            put_s = time.perf_counter() - t
            t = time.perf_counter()
            got = s3.get_object(Bucket=state.bucket, Key="bench/baseline")["Body"].read()
            get_s = time.perf_counter() - t
            assert len(got) == len(blob)

            n = len(blob) / MB
            print(f"lab bench, stack {args.stack}: one {n:.0f} MB layer (random, gzip), one run")
            print(f"  lab start                {start_s:6.1f} s")
            print(f"  push through LB          {n / push_s:6.1f} MB/s   ({push_s:.1f} s)")
            print(f"  pull through LB + edge   {n / pull_s:6.1f} MB/s   ({pull_s:.1f} s)")
            print(
                f"  push to one instance     {n / direct_push_s:6.1f} MB/s   ({direct_push_s:.1f} s; "
                f"LB/instance speed {direct_push_s / push_s:.2f})"
            )
            print(
                f"  pull from one instance   {n / direct_pull_s:6.1f} MB/s   ({direct_pull_s:.1f} s; "
                f"LB/instance speed {direct_pull_s / pull_s:.2f})"
            )
            print(f"  S3 (moto) single PUT     {n / put_s:6.1f} MB/s   push/PUT ratio {put_s / push_s:.2f}")
            print(f"  S3 (moto) GET            {n / get_s:6.1f} MB/s   pull/GET ratio {get_s / pull_s:.2f}")
            # The edge also served the small config blob, so the share can pass 100% by a few hundred bytes.
            print(
                f"  blob bytes from the edge {via_edge / len(blob):6.1%}  "
                f"({via_edge} bytes for a {len(blob)}-byte layer)"
            )
            print("  peak RSS per process (MiB):")
            for name, svc in state.services.items():
                print(f"    {name:11} {peak_rss_mib(int(svc['pid'])):7.0f}")
        finally:
            Lab.down(work / "lab")


if __name__ == "__main__":
    main()
