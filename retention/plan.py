"""What retention keeps and deletes in one repository: pure functions, no I/O.

Policies are per namespace (`storage.retention`): a repository is under a namespace when it equals it or
lies under `NAMESPACE/`. The nearest namespace's `keepLast` and `untaggedAfterDays` apply (a key it leaves
out comes from the namespace above); `protect` patterns add up along the way, so a sub-namespace cannot
unprotect what its parent protects.

Rules, in the order they decide:
  - An attachment tag (cosign's `sha256-<hex>.sig`, `.att`, `.sbom`) never counts toward keepLast: it is
    kept exactly while its subject (the manifest `sha256:<hex>`) stays in the repository, and deleted
    with it, or when its subject is gone already.
  - Every other tag matching a `protect` pattern (shell globs, `fnmatch`, case-sensitive) is kept and does
    not count toward keepLast either.
  - Of the remaining tags, the newest `keepLast` are kept: newest by when the tag was last pushed (the
    LastModified of its link in the bucket, written at every push of the tag); ties within S3's one-second
    resolution go by tag name, the greater first. A tag whose push time is unknown counts as the newest.
  - A digest is kept when any kept tag names it: distribution 2.8 deletes by digest, and a delete removes
    every tag of the digest, so a dropped tag that shares its digest with a kept one stays (a tag cannot be
    deleted alone).
  - Kept manifests keep what they reference: an index its platform manifests, a manifest its attachments
    and the manifests whose OCI `subject` it is; transitively.
  - An untagged manifest is deleted when the policy sets `untaggedAfterDays` and it has been untagged for
    longer (see `untagged_since`); otherwise it stays and keeps what it references.
  - What a deleted manifest referenced and nothing kept references goes with it: an index's platform
    manifests, its signatures.

Deletions are ordered so that an interrupted run leaves nothing a second run cannot finish: an index's
platform manifests before the index (a half-deleted index is still found by its tags and deleted next
time; children deleted after it would be untagged orphans nobody knows to be children), a subject before
its attachments (an attachment left behind is found as an orphan next time).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

NAMESPACE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
ATTACHMENT_TAG = re.compile(r"^sha256-(?P<hex>[0-9a-f]{64})\.(?P<kind>sig|att|sbom)$")


@dataclass(frozen=True)
class Policy:
    """One namespace's retention (None: that key is not set)."""

    keep_last: int | None = None
    untagged_after_days: int | None = None
    protect: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.keep_last is not None:
            out["keepLast"] = self.keep_last
        if self.untagged_after_days is not None:
            out["untaggedAfterDays"] = self.untagged_after_days
        if self.protect:
            out["protect"] = list(self.protect)
        return out


class PolicyError(ValueError):
    """Policies that cannot be applied; the message names the namespace and the key."""


def covers(namespace: str, repository: str) -> bool:
    return repository == namespace or repository.startswith(namespace + "/")


def policy_for(repository: str, policies: Mapping[str, Policy]) -> Policy | None:
    """The effective policy of a repository; None when no namespace covers it (nothing is deleted)."""
    covering = sorted((ns for ns in policies if covers(ns, repository)), key=len)
    if not covering:
        return None
    keep_last: int | None = None
    untagged: int | None = None
    protect: list[str] = []
    for ns in covering:  # outermost first: the nearer namespace overrides
        p = policies[ns]
        keep_last = p.keep_last if p.keep_last is not None else keep_last
        untagged = p.untagged_after_days if p.untagged_after_days is not None else untagged
        protect += p.protect
    return Policy(keep_last, untagged, tuple(dict.fromkeys(protect)))


def parse_policies(doc: object) -> dict[str, Policy]:
    """Policies from their JSON form `{NAMESPACE: {keepLast, untaggedAfterDays, protect}}` (what the host is
    sent); PolicyError naming the key for anything else."""
    if not isinstance(doc, dict):
        raise PolicyError("retention policies: expected an object NAMESPACE -> policy")
    out = {}
    for ns, body in doc.items():
        if not isinstance(ns, str) or not NAMESPACE.fullmatch(ns):
            raise PolicyError(f"retention.{ns}: not a namespace (a repository path like team-a or team-a/ci)")
        if not isinstance(body, dict) or set(body) - {"keepLast", "untaggedAfterDays", "protect"}:
            raise PolicyError(f"retention.{ns}: expected an object with keepLast, untaggedAfterDays, protect")
        keep, days, protect = body.get("keepLast"), body.get("untaggedAfterDays"), body.get("protect", [])
        for key, value in (("keepLast", keep), ("untaggedAfterDays", days)):
            if value is not None and (type(value) is not int or value < 1):
                raise PolicyError(f"retention.{ns}.{key}: {value!r} is not a whole number of at least 1")
        if not isinstance(protect, list) or not all(isinstance(p, str) and p for p in protect):
            raise PolicyError(f"retention.{ns}.protect: {protect!r} is not a list of tag patterns")
        out[ns] = Policy(keep, days, tuple(protect))
    return out


# --- what a repository holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tag:
    name: str
    digest: str
    pushed: datetime | None  # when the tag was last pushed; None: unknown (counts as the newest)


@dataclass(frozen=True)
class Manifest:
    digest: str
    children: tuple[str, ...] = ()  # an index's manifests
    subject: str | None = None  # OCI 1.1 `subject`: this manifest is about that one
    untagged_since: datetime | None = None  # for an untagged manifest; None: unknown (never old enough)


@dataclass(frozen=True)
class Repository:
    name: str
    tags: tuple[Tag, ...]
    manifests: Mapping[str, Manifest]  # every manifest the repository holds, tagged or not


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kept:
    tag: str
    digest: str
    why: str


@dataclass(frozen=True)
class Deletion:
    digest: str
    tags: tuple[str, ...]  # the tags that go with it (every tag naming the digest)
    why: str


@dataclass
class RepositoryPlan:
    repository: str
    policy: Policy
    kept: list[Kept] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)  # in the order they must be applied

    def lines(self) -> list[str]:
        r = self.repository
        out = [f"keep   {r}:{k.tag} {k.digest} ({k.why})" for k in self.kept]
        for d in self.deletions:
            name = ",".join(d.tags) if d.tags else "(untagged)"
            out.append(f"delete {r}:{name} {d.digest} ({d.why})")
        return out


def attachment_subject(tag: str) -> str | None:
    m = ATTACHMENT_TAG.match(tag)
    return f"sha256:{m['hex']}" if m else None


def plan_repository(repo: Repository, policy: Policy, now: datetime) -> RepositoryPlan:
    plan = RepositoryPlan(repo.name, policy)
    tags_of: dict[str, list[str]] = {}
    for t in repo.tags:
        tags_of.setdefault(t.digest, []).append(t.name)
    ordinary = [t for t in repo.tags if attachment_subject(t.name) is None]
    attachments = [t for t in repo.tags if attachment_subject(t.name) is not None]

    why: dict[str, str] = {}  # a tag kept on its own: why
    countable = []
    for t in ordinary:
        pattern = next((p for p in policy.protect if fnmatch.fnmatchcase(t.name, p)), None)
        if pattern is not None:
            why[t.name] = f"protected by {pattern!r}"
        else:
            countable.append(t)
    # Newest first; an unknown push time counts as the newest; ties by name, the greater first.
    countable.sort(key=lambda t: (t.pushed is None, t.pushed or now, t.name), reverse=True)
    limit = len(countable) if policy.keep_last is None else policy.keep_last
    for i, t in enumerate(countable):
        if i < limit:
            why[t.name] = "no keepLast" if policy.keep_last is None else f"newest {policy.keep_last}: #{i + 1}"
    dropped = [t for t in countable[limit:]]

    # Edges: what a manifest keeps (and takes along when it goes). `children`: an index's manifests, deleted
    # before it; `attached`: attachments and referrers of a subject, deleted after it.
    children: dict[str, set[str]] = {d: set(m.children) for d, m in repo.manifests.items()}
    attached: dict[str, set[str]] = {}
    for d, m in repo.manifests.items():
        if m.subject:
            attached.setdefault(m.subject, set()).add(d)
    for t in attachments:
        subject = attachment_subject(t.name)
        assert subject is not None
        attached.setdefault(subject, set()).add(t.digest)
    refs = {d: children.get(d, set()) | attached.get(d, set()) for d in set(children) | set(attached)}

    tagged = {t.digest for t in repo.tags}
    doomed_roots = {t.digest for t in dropped}
    roots = {t.digest for t in ordinary if t.name in why}
    cutoff = None if policy.untagged_after_days is None else now - timedelta(days=policy.untagged_after_days)
    old_untagged: dict[str, Manifest] = {}
    for d, m in repo.manifests.items():
        if d in tagged:
            continue
        if cutoff is not None and m.untagged_since is not None and m.untagged_since <= cutoff:
            old_untagged[d] = m
    # What a doomed manifest references goes with it unless something kept references it too; an untagged
    # manifest no doomed one references is a root of its own unless it is old.
    taken_along = _reach(doomed_roots | set(old_untagged), refs) - doomed_roots - set(old_untagged)
    for d in repo.manifests:
        if d not in tagged and d not in old_untagged and d not in taken_along:
            roots.add(d)
    kept = _reach(roots, refs)

    # Tags: the ones kept on their own, the ones kept with their digest, the attachments of kept manifests.
    for t in repo.tags:
        if t.name in why:
            plan.kept.append(Kept(t.name, t.digest, why[t.name]))
        elif t.digest in kept:
            subject = attachment_subject(t.name)
            if subject is not None:
                reason = f"attachment of kept {subject}"
            else:
                keeper = next((n for n in tags_of[t.digest] if n in why), None)
                reason = f"same digest as kept tag {keeper}" if keeper else "referenced by a kept manifest"
            plan.kept.append(Kept(t.name, t.digest, reason))

    doomed = (set(repo.manifests) | tagged) - kept
    reasons: dict[str, str] = {}
    for t in dropped:
        rank = countable.index(t) + 1
        pushed = t.pushed.isoformat(timespec="seconds") if t.pushed else "unknown"
        reasons.setdefault(t.digest, f"beyond keepLast {policy.keep_last}: #{rank}, pushed {pushed}")
    for d, m in old_untagged.items():
        since = m.untagged_since.isoformat(timespec="seconds") if m.untagged_since else "?"
        reasons[d] = f"untagged since {since}, over untaggedAfterDays {policy.untagged_after_days}"
    for t in attachments:
        subject = attachment_subject(t.name)
        if t.digest in doomed and t.digest not in reasons:
            gone = subject not in repo.manifests and subject not in tagged
            reasons[t.digest] = f"attachment of {'absent' if gone else 'deleted'} {subject}"
    for d in sorted(doomed):
        if d not in reasons:
            parents = sorted(p for p, r in refs.items() if d in r and p in doomed)
            reasons[d] = f"referenced only by deleted {parents[0]}" if parents else "referenced by nothing kept"
    for d in _order(doomed, children, attached):
        plan.deletions.append(Deletion(d, tuple(sorted(tags_of.get(d, []))), reasons[d]))
    return plan


def _reach(start: Iterable[str], refs: Mapping[str, set[str]]) -> set[str]:
    seen = set(start)
    todo = list(seen)
    while todo:
        for nxt in refs.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _order(doomed: set[str], children: Mapping[str, set[str]], attached: Mapping[str, set[str]]) -> list[str]:
    """A topological order of the deletions: an index's platform manifests before the index, a subject
    before its attachments and referrers; otherwise by digest (deterministic)."""
    before: dict[str, set[str]] = {d: set() for d in doomed}  # d -> what must be deleted before d
    for parent, kids in children.items():
        if parent in doomed:
            for kid in kids & doomed:
                before[parent].add(kid)
    for subject, extras in attached.items():
        if subject in doomed:
            for extra in extras & doomed:
                before[extra].add(subject)
    out: list[str] = []
    while before:
        ready = sorted(d for d, deps in before.items() if not deps - set(out))
        if not ready:  # a cycle cannot happen between content digests; never loop on bad input
            ready = sorted(before)
        for d in ready:
            out.append(d)
            del before[d]
    return out
