"""fleet/gc.py without a registry: what it reports as freed (the bucket's listing before and after), the
dry run's parse of garbage-collect's output, and the read-only window around the real run. The real
registry's GC (a multi-arch index kept, no stale cache) is tests/test_lab_gc.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fleet.gc import garbage_collect
from fleet.restore import BLOBS


def blob(n: int) -> tuple[str, str]:
    hex_digest = f"{n:064x}"
    return f"sha256:{hex_digest}", f"{BLOBS}sha256/{hex_digest[:2]}/{hex_digest}/data"


class FakeFleet:
    description = "fake"

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3, self.bucket, self.calls = s3, bucket, []  # type: ignore[var-annotated]

    def instances(self) -> list[str]:
        return ["a", "b"]

    def set_read_only(self, read_only: bool, log: Callable[[str], None]) -> None:
        self.calls.append(f"read-only={read_only}")

    def restart_all(self, log: Callable[[str], None]) -> None:
        self.calls.append("restart")

    def garbage_collect(self, dry_run: bool, log: Callable[[str], None]) -> str:
        self.calls.append(f"gc dry_run={dry_run}")
        if not dry_run:
            self.s3.delete_object(Bucket=self.bucket, Key=blob(2)[1])
        return (
            f"1 blobs marked, 1 blobs and 0 manifests eligible for deletion\nblob eligible for deletion: {blob(2)[0]}\n"
        )


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-1")
        client.create_bucket(Bucket="registry", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        client.put_bucket_versioning(Bucket="registry", VersioningConfiguration={"Status": "Enabled"})
        for n, size in ((1, 1000), (2, 300)):
            client.put_object(Bucket="registry", Key=blob(n)[1], Body=b"x" * size)
        yield client


def test_gc_reports_what_left_the_listing_and_when_the_bytes_go(s3: Any) -> None:
    fleet, lines = FakeFleet(s3, "registry"), []  # type: ignore[var-annotated]
    dry = garbage_collect(fleet=fleet, stack="dev", s3=s3, bucket="registry", dry_run=True, noncurrent_days=30,
                          log=lines.append)  # fmt: skip
    assert (dry.freed_blobs, dry.freed_bytes) == (1, 300)
    assert fleet.calls == ["gc dry_run=True"], "a dry run opened the read-only window"
    report = garbage_collect(fleet=fleet, stack="dev", s3=s3, bucket="registry", dry_run=False, noncurrent_days=30,
                             log=lines.append)  # fmt: skip
    assert fleet.calls[1:] == ["read-only=True", "gc dry_run=False", "read-only=False"]
    assert (report.freed_blobs, report.freed_bytes, report.blobs_before, report.bytes_before) == (1, 300, 2, 1300)
    assert lines[-2] == "freed 1 of 2 blobs, 300 of 1300 bytes"
    assert "expires them 30 days after GC" in lines[-1]
    noncurrent = [v for v in s3.list_object_versions(Bucket="registry")["Versions"] if not v["IsLatest"]]
    assert [v["Size"] for v in noncurrent] == [300], "with versioning the bytes stay as a noncurrent version"
