"""One retention run: every repository a policy covers, read, planned and (unless a dry run) applied.

Repository by repository: its tags and their digests through the API, its manifests and push times from
the bucket's listing, a plan (retention/plan.py), printed, then its deletions in the plan's order. A
repository is planned right before it is applied, so what a push changed meanwhile is seen. The plan is
computed from what the registry holds, not from a journal: a run that was interrupted left a registry a
new plan finishes (what was deleted is gone, what remains is planned again the same way), and a second
run over a finished one plans nothing. Before an attachment whose subject was absent at planning is
deleted, its subject is asked for again by digest: it is deleted only if the registry says 404.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retention import registry as api
from retention.plan import (
    Manifest,
    Policy,
    Repository,
    RepositoryPlan,
    Tag,
    attachment_subject,
    plan_repository,
    policy_for,
)
from retention.storage import read_times
from signing.registry import RegistryClient


@dataclass
class Summary:
    repositories: int = 0
    deletions: int = 0
    deleted: int = 0  # applied now (0 in a dry run)
    kept_tags: int = 0

    def line(self, dry_run: bool) -> str:
        verb = "would delete" if dry_run else "deleted"
        count = self.deletions if dry_run else self.deleted
        return (
            f"retention: {self.repositories} repositories under a policy, {self.kept_tags} tags kept, "
            f"{verb} {count} manifests"
        )


def read_repository(client: RegistryClient, s3: Any, bucket: str, name: str, need_bodies: bool) -> Repository:
    """The repository as the plan sees it. Bodies of untagged manifests are read only when needed
    (`need_bodies`: something may be deleted, so what the rest references matters)."""
    times = read_times(s3, bucket, name)
    tags: list[Tag] = []
    manifests: dict[str, Manifest] = {}
    for tag in api.tags(client, name):
        got = api.get_manifest(client, name, tag)
        if got is None:  # deleted meanwhile
            continue
        digest, body, media_type = got
        tags.append(Tag(tag, digest, times.tag_pushed.get(tag)))
        if attachment_subject(tag) is None and digest not in manifests:
            children, subject = api.references(body, media_type)
            manifests[digest] = Manifest(digest, children, subject)
    tagged = {t.digest for t in tags}
    for digest in sorted(set(times.manifest_pushed) - tagged):
        children, subject = (), None
        if need_bodies:
            got = api.get_manifest(client, name, digest)
            if got is None:
                continue
            children, subject = api.references(got[1], got[2])
        manifests[digest] = Manifest(digest, children, subject, times.untagged_since(digest))
    for t in tags:  # attachment manifests: known, referenced by their subject
        manifests.setdefault(t.digest, Manifest(t.digest))
    return Repository(name, tuple(tags), manifests)


def plan_one(client: RegistryClient, s3: Any, bucket: str, name: str, policy: Policy, now: datetime) -> RepositoryPlan:
    repo = read_repository(client, s3, bucket, name, need_bodies=False)
    plan = plan_repository(repo, policy, now)
    if plan.deletions and set(repo.manifests) - {t.digest for t in repo.tags}:
        # Something goes: read what the untagged manifests reference before deciding (an untagged index
        # that stays keeps its platform manifests; a referrer stays with its subject).
        plan = plan_repository(read_repository(client, s3, bucket, name, need_bodies=True), policy, now)
    return plan


def apply(client: RegistryClient, plan: RepositoryPlan, log: Callable[[str], None]) -> int:
    deleted = 0
    for d in plan.deletions:
        subjects = {attachment_subject(t) for t in d.tags} - {None}
        if d.why.startswith("attachment of absent") and any(
            s is not None and api.exists(client, plan.repository, s) for s in subjects
        ):
            log(f"skip   {plan.repository}@{d.digest}: its subject is back")
            continue
        if api.delete(client, plan.repository, d.digest):
            deleted += 1
            log(f"deleted {plan.repository}@{d.digest}")
    return deleted


def run_retention(
    client: RegistryClient,
    s3: Any,
    bucket: str,
    policies: Mapping[str, Policy],
    now: datetime,
    dry_run: bool,
    log: Callable[[str], None],
) -> Summary:
    summary = Summary()
    for name in api.catalog(client):
        policy = policy_for(name, policies)
        if policy is None:
            continue
        summary.repositories += 1
        plan = plan_one(client, s3, bucket, name, policy, now)
        summary.kept_tags += len(plan.kept)
        summary.deletions += len(plan.deletions)
        for line in plan.lines():
            log(line)
        if not dry_run:
            summary.deleted += apply(client, plan, log)
    log(summary.line(dry_run))
    return summary
