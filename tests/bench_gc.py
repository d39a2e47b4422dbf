"""Benchmark (not a test): garbage collection over 100 repositories in the lab, in one run.

Pushes one small image (two layers) into each of N repositories through the lab (nginx, both instances),
deletes the manifests of every other repository, then runs `fleet gc` on the lab: the read-only window
(both instances restarted), `garbage-collect` on one instance, both restarted read-write. Prints the push
time, the dry run's time, the GC window's time split into switching and collecting, and what was freed.
Figures depend on the machine (and on moto): report them with it, never assert on them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.gc import garbage_collect  # noqa: E402
from fleet.maintenance import LabFleet  # noqa: E402
from lab.image import build_image, skopeo_copy  # noqa: E402
from lab.lab import Lab, s3_client  # noqa: E402
from tests.helpers import htpasswd_settings  # noqa: E402
from tests.helpers.registry import call  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repositories", type=int, default=100)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    settings = htpasswd_settings()
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as tmp:
        state = Lab(settings, Path(tmp) / "lab").up()
        try:
            creds = f"{state.username}:{state.password}"
            host = state.registry_url.removeprefix("https://")
            layout = Path(tmp) / "src"
            started = time.monotonic()
            digests = {}
            for i in range(args.repositories):
                source = build_image(layout, f"r{i}", [{"a.bin": 20_000}, {"b.bin": 5_000}])
                skopeo_copy(source, f"docker://{host}/{state.namespace}/r{i}:1", state.cert_dir, creds)
                index = json.loads((layout / "index.json").read_text())
                (m,) = [
                    m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == f"r{i}"
                ]
                digests[i] = m["digest"]
            pushed = time.monotonic() - started
            for i in range(0, args.repositories, 2):
                url = f"{state.registry_url}/v2/{state.namespace}/r{i}/manifests/{digests[i]}"
                assert call(state.ca_file, "DELETE", url, basic=(state.username, state.password))[0] == 202
            s3 = s3_client(state.s3_endpoint, state.ca_file, settings.region)
            fleet = LabFleet(Path(state.state_dir))
            timings: dict[str, float] = {}
            real_switch, real_gc = fleet.set_read_only, fleet.garbage_collect

            def timed(name: str, fn):  # type: ignore[no-untyped-def]
                def wrapper(*a):  # type: ignore[no-untyped-def]
                    t = time.monotonic()
                    try:
                        return fn(*a)
                    finally:
                        timings[name] = timings.get(name, 0.0) + time.monotonic() - t

                return wrapper

            fleet.set_read_only = timed("switch", real_switch)  # type: ignore[method-assign]
            fleet.garbage_collect = timed("collect", real_gc)  # type: ignore[method-assign]
            days = settings.storage.noncurrent_version_days
            common = {"fleet": fleet, "stack": "dev", "s3": s3, "bucket": state.bucket, "noncurrent_days": days,
                      "log": lambda line: None}  # fmt: skip
            t = time.monotonic()
            dry = garbage_collect(dry_run=True, **common)  # type: ignore[arg-type]
            dry_time = time.monotonic() - t
            timings.clear()
            t = time.monotonic()
            report = garbage_collect(dry_run=False, **common)  # type: ignore[arg-type]
            total = time.monotonic() - t
            print(f"pushed {args.repositories} repositories in {pushed:.1f}s; deleted every other image")
            print(f"dry run: {dry_time:.1f}s, would free {dry.freed_blobs} blobs")
            print(f"gc: {total:.1f}s in all: read-only and read-write switches {timings['switch']:.1f}s, "
                  f"garbage-collect {timings['collect']:.1f}s; freed {report.freed_blobs} of {report.blobs_before} "
                  f"blobs, {report.freed_bytes} of {report.bytes_before} bytes")  # fmt: skip
        finally:
            Lab.down(Path(tmp) / "lab")


if __name__ == "__main__":
    main()
