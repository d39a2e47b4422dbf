"""Garbage collection without losing an image: `python -m fleet gc STACK [--dry-run] [--lab]`.

Distribution's `garbage-collect` marks every blob a manifest of any repository references and deletes the
rest. It is only safe while nothing writes (a blob uploaded between mark and sweep is deleted under a
manifest that needs it), and every instance must be restarted after it (an instance caches blob
descriptors: one not restarted keeps serving deleted blobs and accepts a re-push that stores a broken
image). So: every instance read-only (fleet/maintenance.py), `garbage-collect` on one, every instance
restarted read-write. It never runs with `--delete-untagged`: distribution 2.8 then deletes the platform
manifests a tagged multi-arch index references (distribution #3004, #3178), which breaks the index.

What it frees: the blobs gone from the bucket's current listing, with their sizes. With versioning on, each
is now a delete marker over a noncurrent version: the bytes are billed until the lifecycle rule expires
noncurrent versions (storage.noncurrentVersionDays), and until then a restore can bring them back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet.maintenance import Fleet, read_only_window
from fleet.restore import BLOBS

ELIGIBLE = re.compile(r"blob eligible for deletion: (sha256:[a-f0-9]{64})")


@dataclass(frozen=True)
class GcReport:
    blobs_before: int
    bytes_before: int
    freed_blobs: int
    freed_bytes: int
    dry_run: bool
    noncurrent_days: int
    finished: datetime

    def lines(self) -> list[str]:
        verb = "would free" if self.dry_run else "freed"
        out = [
            f"{verb} {self.freed_blobs} of {self.blobs_before} blobs, {self.freed_bytes} of {self.bytes_before} bytes"
        ]
        if not self.dry_run and self.freed_blobs:
            gone = self.finished + timedelta(days=self.noncurrent_days)
            out.append(
                f"the bucket is versioned: those bytes stay as noncurrent versions (restorable with fleet restore) "
                f"until the lifecycle rule expires them {self.noncurrent_days} days after GC, "
                f"from {gone.date().isoformat()} (S3 applies lifecycle rules within about a day)"
            )
        return out


def current_blobs(s3: Any, bucket: str) -> dict[str, int]:
    """Every blob in the bucket's current listing: digest -> bytes."""
    blobs = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=BLOBS):
        for obj in page.get("Contents", []):
            parts = obj["Key"].removeprefix(BLOBS).split("/")  # sha256/ab/<hex>/data
            if len(parts) == 4 and parts[3] == "data":
                blobs[f"{parts[0]}:{parts[2]}"] = int(obj["Size"])
    return blobs


def garbage_collect(
    *,
    fleet: Fleet,
    stack: str,
    s3: Any,
    bucket: str,
    dry_run: bool,
    noncurrent_days: int,
    log: Callable[[str], None],
) -> GcReport:
    before = current_blobs(s3, bucket)
    if dry_run:
        output = fleet.garbage_collect(True, log)
        eligible = set(ELIGIBLE.findall(output))
        freed = {d: before.get(d, 0) for d in eligible}
    else:
        with read_only_window(fleet, stack, log):
            fleet.garbage_collect(False, log)
        after = current_blobs(s3, bucket)
        freed = {d: size for d, size in before.items() if d not in after}
    report = GcReport(
        blobs_before=len(before),
        bytes_before=sum(before.values()),
        freed_blobs=len(freed),
        freed_bytes=sum(freed.values()),
        dry_run=dry_run,
        noncurrent_days=noncurrent_days,
        finished=datetime.now(UTC),
    )
    for line in report.lines():
        log(line)
    return report
