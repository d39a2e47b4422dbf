"""The scan reports the gate and `fleet gate`/`fleet scan-report` read: `latest.json` of a digest
(scanner/report.py `latest_key`) in the registry's bucket, through boto3.

`ReportStore.latest(digest)` is the digest's newest `Report`, None when the scanner has not written one, or
`Unreadable` when the object is not a valid report of that digest (corrupt, too large, another digest). S3
failing (unreachable, throttling past the retries, access denied) raises `ReportsUnavailable`: the gate then
answers 503 and serves nothing.

What the gate reads is remembered per digest for `cache_seconds` (at most 60, default 5; at most
`cache_entries`, oldest out first), absences and unreadable reports too: a report the scanner writes (a fresh
push's first scan, or a rescan's new findings) is seen by every gate within `cache_seconds`. S3 calls time out
fast (2 s to connect, 5 s to read, 2 attempts), so a client waits seconds, not minutes, for a 503.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from gate.config import ReportsConfig
from gate.scan import Unreadable
from scanner.report import Report, ReportError, latest_key, parse_report

MAX_REPORT_BYTES = 16 * 1024 * 1024  # a report of thousands of findings is a few MiB
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}

Latest = Report | Unreadable | None


class ReportsUnavailable(Exception):  # noqa: N818
    """The reports cannot be read now (S3 failing or refusing): retry later; nothing may be served."""


def s3_client(config: ReportsConfig) -> Any:
    """A boto3 S3 client for the reports' bucket: short timeouts, few retries (a client is waiting)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        region_name=config.region,
        endpoint_url=config.endpoint_url,
        verify=str(config.ca_bundle) if config.ca_bundle else None,
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}),
    )


class ReportStore:
    def __init__(
        self,
        s3: Any,
        bucket: str,
        cache_seconds: float = 0.0,
        cache_entries: int = 10_000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s3, self.bucket = s3, bucket
        self.ttl, self.size, self.now = cache_seconds, cache_entries, now
        self._cache: collections.OrderedDict[str, tuple[float, Latest]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # S3 reads made (tests)

    @classmethod
    def from_config(cls, config: ReportsConfig) -> ReportStore:
        return cls(s3_client(config), config.bucket, config.cache_seconds, config.cache_entries)

    def latest(self, digest: str) -> Latest:
        if self.ttl > 0:
            with self._lock:
                hit = self._cache.get(digest)
                if hit is not None and hit[0] > self.now():
                    return hit[1]
        value = self.read(digest)
        if self.ttl > 0:
            with self._lock:
                self._cache[digest] = (self.now() + self.ttl, value)
                self._cache.move_to_end(digest)
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        return value

    def read(self, digest: str) -> Latest:
        """The object as it is now (no cache)."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = latest_key(digest)
        where = f"s3://{self.bucket}/{key}"
        self.reads += 1
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=key)
            data = obj["Body"].read(MAX_REPORT_BYTES + 1)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in MISSING_CODES:
                return None
            raise ReportsUnavailable(f"reading {where}: {code or err}") from None
        except BotoCoreError as err:
            raise ReportsUnavailable(f"reading {where}: {err}") from None
        if len(data) > MAX_REPORT_BYTES:
            return Unreadable(f"{where} is over {MAX_REPORT_BYTES // (1024 * 1024)} MiB")
        try:
            report = parse_report(data, where)
        except ReportError as err:
            return Unreadable(str(err))
        if report.digest != digest:
            return Unreadable(f"{where} is the report of {report.digest}, not of {digest}")
        return report
