"""`python -m fleet scan-report STACK IMAGE` and `python -m fleet gate STACK IMAGE`: what the scanner found in
an image, and whether the stack's gate would serve it, for CI and people.

IMAGE is `[REGISTRY/]REPO[:TAG|@DIGEST]` in the stack's registry (no tag: latest). A tag is resolved to its
digest once, through the registry like any client (in a protected namespace the gate's refusal names the
digest it served), and everything is checked on that digest.

`scan-report` prints the digest's newest report (scanner/report.py `latest.json`): scanned-at, the database
date, the highest severity, every finding; `--json` prints it as JSON. Exit 1 when there is no report yet (or
it is unreadable).

`gate` applies the stack's pull policies to the digest exactly as the gate on the hosts does: the same
policies (infra/gate_spec.py renders them for the hosts too), the same decision (gate/scan.py), the same
signature verifier (signing/verify.py, with the stack's public key). Exit 0 when the gate would serve it,
1 listing every reason when it would not, 2 for a usage error (a bad reference, no credentials, no stack).

A deployed stack is reached through its outputs (`bucketName`, `signingPublicKeyPem`; Pulumi's Automation
API, a fake in tests) with AWS credentials from the environment; `--lab` reaches the running lab of the
stack (its registry, its moto S3, its key).
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gate.config import NamespacePolicy, covering
from gate.reports import Latest, ReportStore, ReportsUnavailable
from gate.scan import Refusal, Unreadable, reads_reports, scan_refusals
from infra.settings import Settings, load_stack_settings
from scanner.report import Report

if TYPE_CHECKING:
    from fleet.runner import StackOutputs
    from fleet.signing import Target
    from signing.references import ImageRef

COMMANDS = ("scan-report", "gate")


class ScanCommandError(Exception):
    """A usage error or an unreachable dependency the user can fix (exit 2)."""


def add_parsers(sub: Any, stacks: str) -> None:
    from fleet.cli import image_arguments

    for name, text in (
        ("scan-report", "the newest scan report of an image's digest (findings, database date); exit 1 when none"),
        ("gate", "exit 0 when the stack's gate would serve the image (signed and scanned as its namespace needs), "
         "else 1 with every reason"),
    ):  # fmt: skip
        p = sub.add_parser(name, help=text)
        image_arguments(p, stacks, "the running lab of the stack (its registry and moto S3)")
        if name == "scan-report":
            p.add_argument("--json", action="store_true", help="the report as JSON")


# --- where things are ----------------------------------------------------------------------------


@dataclass
class Where:
    target: Target
    reports: ReportStore
    public_keys: Callable[[], list[str]]  # the stack's public signing key(s), read only when needed


def deployed(settings: Settings, target: Target, runner: StackOutputs) -> Where:
    from fleet.runner import RunnerError
    from gate.reports import s3_client

    try:
        outputs = runner.stack_outputs(settings.stack)
    except RunnerError as err:
        raise ScanCommandError(str(err)) from None
    bucket = outputs.get("bucketName")
    if not isinstance(bucket, str) or not bucket:
        raise ScanCommandError(f"stack {settings.stack} has no output bucketName: has it been deployed?")
    from gate.config import ReportsConfig

    s3 = s3_client(ReportsConfig(bucket=bucket, region=settings.region))

    def keys() -> list[str]:
        pem = outputs.get("signingPublicKeyPem")
        if not isinstance(pem, str) or "BEGIN PUBLIC KEY" not in pem:
            raise ScanCommandError(f"stack {settings.stack} has no output signingPublicKeyPem")
        return [pem]

    return Where(target, ReportStore(s3, bucket), keys)


def lab(settings: Settings, target: Target, state: Any) -> Where:
    import boto3

    from lab.overrides import LAB_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY

    s3 = boto3.client(
        "s3",
        endpoint_url=state.s3_endpoint,
        region_name=settings.region,
        verify=state.ca_file,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
    )

    def keys() -> list[str]:
        signing = getattr(state, "signing", None) or {}
        if not signing.get("public_key_file"):
            raise ScanCommandError("the lab has no signing key (its stack protects no namespace)")
        return [Path(signing["public_key_file"]).read_text()]

    return Where(target, ReportStore(s3, LAB_BUCKET), keys)


def namespace_policies(settings: Settings) -> dict[str, NamespacePolicy]:
    """The stack's gate policies in the gate's own model: what the hosts' gate config holds."""
    from infra.gate_spec import gate_policies

    return {ns: NamespacePolicy.model_validate(p.entry()) for ns, p in gate_policies(settings).items()}


# --- the checks ----------------------------------------------------------------------------------


def resolve_digest(where: Where, image: ImageRef) -> str:
    from fleet.signing import SignError, resolve

    try:
        return resolve(where.target.client(), where.target, image).digest
    except SignError as err:
        raise ScanCommandError(str(err)) from None


def latest(where: Where, digest: str) -> Latest:
    try:
        return where.reports.read(digest)
    except ReportsUnavailable as err:
        raise ScanCommandError(
            f"the scan reports cannot be read: {err} (credentials with s3:GetObject and s3:ListBucket on the "
            "registry bucket are needed)"
        ) from None


def signature_refusal(where: Where, image: ImageRef, digest: str) -> tuple[Refusal | None, str]:
    """(a refusal or None, what was found), verifying the digest with the stack's key."""
    from fleet.signing import SignError, verify
    from signing.references import ImageRef

    where.target.public_keys = where.public_keys()
    try:
        result = verify(where.target, ImageRef(image.repository, None, digest))
    except SignError as err:
        raise ScanCommandError(str(err)) from None
    if result.valid:
        return None, result.message
    reason = result.reason or "no-signature"
    return Refusal(reason, f"no valid signature by the stack's signing key ({reason}: {result.explanation})"), ""


@dataclass
class Verdict:
    reference: str  # registry/repo@digest
    refusals: list[Refusal]
    notes: list[str]

    @property
    def passed(self) -> bool:
        return not self.refusals


def judge(
    settings: Settings,
    where: Where,
    image: ImageRef,
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
) -> Verdict:
    """What the gate would decide for the image's digest (resolved once)."""
    digest = resolve_digest(where, image)
    reference = f"{where.target.registry_host}/{image.repository}@{digest}"
    covers = covering(namespace_policies(settings), image.repository)
    policies = [p for _, p in covers]
    notes: list[str] = []
    refusals: list[Refusal] = []
    if not covers:
        notes.append(f"{image.repository} lies in no protected namespace: the gate serves it as the registry does")
    if any(p.require_signed for p in policies):
        refusal, found = signature_refusal(where, image, digest)
        if refusal is None:
            notes.append(f"signature: {found}")
        else:
            refusals.append(refusal)
    if reads_reports(policies):
        report = latest(where, digest)
        for ns, p in covers:
            if p.reads_reports:
                notes.append(
                    f"namespace {ns}: blocks at {p.block_severity or 'nothing'}, unscanned {p.unscanned}, "
                    f"{len(p.allow_vulnerabilities)} allow-list entries"
                )
        if isinstance(report, Report):
            notes.append(
                f"scan: {report.scanner} at {report.scanned_at:%Y-%m-%dT%H:%M:%SZ}, database {report.database_date}, "
                f"highest severity {report.highest_severity}, {len(report.findings)} findings"
            )
        elif report is None:
            notes.append("scan: no report yet")
        refusals += scan_refusals(policies, report, clock())
    return Verdict(reference, refusals, notes)


# --- output ----------------------------------------------------------------------------------------


def print_report(reference: str, report: Latest, as_json: bool, out: TextIO) -> bool:
    if as_json:
        doc: dict[str, Any] = {"image": reference, "report": None}
        if isinstance(report, Report):
            doc["report"] = json.loads(report.to_json())
            doc["highestSeverity"] = report.highest_severity
            doc["databaseDate"] = report.database_date
        elif isinstance(report, Unreadable):
            doc["error"] = report.message
        print(json.dumps(doc, indent=2), file=out)
        return isinstance(report, Report)
    if report is None:
        print(f"{reference}: no scan report yet (the scanner has not reported on this digest)", file=out)
        return False
    if isinstance(report, Unreadable):
        print(f"{reference}: the scan report is unreadable: {report.message}", file=out)
        return False
    print(reference, file=out)
    print(f"  scanned at:       {report.scanned_at:%Y-%m-%dT%H:%M:%SZ} ({report.scanner})", file=out)
    print(
        f"  database:         {report.database_date} (updated {report.database_updated_at:%Y-%m-%dT%H:%M:%SZ})",
        file=out,
    )
    print(f"  highest severity: {report.highest_severity}", file=out)
    print(f"  findings:         {len(report.findings)}", file=out)
    for f in sorted(report.findings, key=lambda f: (-_rank(f.severity), f.id, f.package)):
        fixed = f" (fixed in {f.fixed_version})" if f.fixed_version else " (no fix yet)"
        title = f"  {f.title}" if f.title else ""
        print(f"    {f.severity:<8} {f.id:<20} {f.package} {f.installed_version}{fixed}{title}", file=out)
    return True


def _rank(severity: str) -> int:
    from scanner.report import severity_rank

    return severity_rank(severity)


def print_verdict(verdict: Verdict, out: TextIO) -> None:
    if verdict.passed:
        print(f"PASS {verdict.reference}", file=out)
    else:
        print(f"REFUSED {verdict.reference}", file=out)
        for refusal in verdict.refusals:
            print(f"  - {refusal.message}", file=out)
    for note in verdict.notes:
        print(f"  {note}", file=out)


# --- the command ---------------------------------------------------------------------------------


def where_for(
    args: argparse.Namespace, settings: Settings, runner: StackOutputs | None, stacks_dir: Path
) -> tuple[Where, ImageRef]:
    """The registry as `fleet verify` reaches it (fleet/cli.py signing_target: user mistakes exit 2), plus the
    reports: the lab's moto S3, or the deployed stack's bucket (its outputs)."""
    from fleet.cli import lab_dir, signing_target

    target, image = signing_target(args, stacks_dir)
    if args.lab:
        from lab.lab import LabState

        return lab(settings, target, LabState.load(lab_dir(args.stack, args.state_dir).resolve())), image
    from fleet.runner import AutomationRunner

    return deployed(settings, target, runner if runner is not None else AutomationRunner()), image


def run(
    args: argparse.Namespace,
    out: TextIO,
    stacks_dir: Path,
    runner: StackOutputs | None = None,
    clock: Callable[[], datetime.datetime] | None = None,
) -> int:
    """0, 1 (no report / refused), or ScanCommandError (exit 2; fleet/cli.py prints it)."""
    settings = load_stack_settings(args.stack, stacks_dir=stacks_dir)
    where, image = where_for(args, settings, runner, stacks_dir)
    if args.command == "scan-report":
        digest = resolve_digest(where, image)
        reference = f"{where.target.registry_host}/{image.repository}@{digest}"
        return 0 if print_report(reference, latest(where, digest), args.json, out) else 1
    verdict = judge(settings, where, image, clock) if clock else judge(settings, where, image)
    print_verdict(verdict, out)
    return 0 if verdict.passed else 1
