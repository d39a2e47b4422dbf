"""Pull-time vulnerability blocking: the one decision the gate (gate/app.py) and `python -m fleet gate` share.

`scan_refusals(policies, report, now)` is pure: the namespace policies that cover a repository (gate/config.py
`NamespacePolicy`), the digest's newest scan report (scanner/report.py; None when there is none, `Unreadable`
when it exists but is not a valid report) and the time. It returns the reasons to refuse, none to serve:

  - `vulnerable`: findings at or above a policy's `block_severity` whose id is not on that policy's allow-list
    (an entry counts through its `expires` day, UTC, and stops the day after). The message names the highest
    such severity and up to five ids, most severe first: `vulnerabilities at or above HIGH: CRITICAL
    CVE-2024-0001, CVE-2024-0002 (3 more)`;
  - `unscanned`: no report yet and a policy says `unscanned: deny`;
  - `report-unreadable`: the report is corrupt or for another digest: refused (fail closed) by any policy that
    reads reports.

Each covering policy applies on its own (a parent namespace's threshold still holds under a child's allow-list);
equal reasons are given once.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gate.config import NamespacePolicy
from scanner.report import Report, severity_rank

VULNERABLE = "vulnerable"
UNSCANNED = "unscanned"
UNREADABLE = "report-unreadable"
SHOWN_IDS = 5


@dataclass(frozen=True)
class Unreadable:
    """A report that exists but cannot be used; `message` says why (for the refusal and the logs)."""

    message: str


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str


def allowed_ids(policy: NamespacePolicy, now: datetime.datetime) -> set[str]:
    """The allow-list's ids that count at `now`: through their expiry day (UTC), not the day after."""
    today = now.astimezone(datetime.UTC).date()
    return {entry.id for entry in policy.allow_vulnerabilities if today <= entry.expires}


def policy_refusals(
    policy: NamespacePolicy, report: Report | Unreadable | None, now: datetime.datetime
) -> list[Refusal]:
    """The reasons one namespace policy refuses the digest whose newest report is `report`."""
    if not policy.reads_reports:
        return []
    if isinstance(report, Unreadable):
        return [Refusal(UNREADABLE, f"its scan report is unreadable ({report.message}); refused until it is rescanned")]
    if report is None:
        return [Refusal(UNSCANNED, "not scanned yet")] if policy.unscanned == "deny" else []
    if policy.block_severity is None:
        return []
    threshold = severity_rank(policy.block_severity)
    allowed = allowed_ids(policy, now)
    blocking = sorted(
        (f for f in report.findings if severity_rank(f.severity) >= threshold and f.id not in allowed),
        key=lambda f: (-severity_rank(f.severity), f.id),
    )
    if not blocking:
        return []
    ids = list(dict.fromkeys(f.id for f in blocking))
    more = f" ({len(ids) - SHOWN_IDS} more)" if len(ids) > SHOWN_IDS else ""
    message = (
        f"vulnerabilities at or above {policy.block_severity}: {blocking[0].severity} "
        f"{', '.join(ids[:SHOWN_IDS])}{more}"
    )
    return [Refusal(VULNERABLE, message)]


def scan_refusals(
    policies: Iterable[NamespacePolicy], report: Report | Unreadable | None, now: datetime.datetime
) -> list[Refusal]:
    """Every covering policy's reasons, each once, in policy order."""
    if now.tzinfo is None:
        raise ValueError("scan_refusals needs an aware time (UTC)")
    out: list[Refusal] = []
    for policy in policies:
        for refusal in policy_refusals(policy, report, now):
            if refusal not in out:
                out.append(refusal)
    return out


def reads_reports(policies: Sequence[NamespacePolicy]) -> bool:
    return any(p.reads_reports for p in policies)
