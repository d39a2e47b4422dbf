"""When tags and manifests were pushed, read from the registry's own files in the bucket.

The registry API has no push time, and an image config's `created` is what the builder wrote (reproducible
builds set it to 1970, an index and a signature have none). What pushes really change is the registry's
link files in S3, each rewritten at every push (distribution 2.8, `registry/storage`):

    repositories/R/_manifests/tags/T/current/link          T -> digest, written whenever T is pushed
    repositories/R/_manifests/tags/T/index/sha256/H/link   written whenever T is pushed as sha256:H; kept
                                                           while T exists (the tag's history)
    repositories/R/_manifests/revisions/sha256/H/link      written whenever sha256:H is pushed into R

One ListObjectsV2 over `R/_manifests/` gives all three with their LastModified (whole seconds); no object
is read, so this needs `s3:ListBucket` only, which a host's role has for the registry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

REPOSITORIES = "docker/registry/v2/repositories/"
_TAG_CURRENT = re.compile(r"^tags/(?P<tag>[^/]+)/current/link$")
_TAG_INDEX = re.compile(r"^tags/(?P<tag>[^/]+)/index/(?P<algo>[a-z0-9]+)/(?P<hex>[a-f0-9]+)/link$")
_REVISION = re.compile(r"^revisions/(?P<algo>[a-z0-9]+)/(?P<hex>[a-f0-9]+)/link$")


@dataclass
class RepositoryTimes:
    tag_pushed: dict[str, datetime] = field(default_factory=dict)  # tag -> its current link's time
    tag_history: dict[str, dict[str, datetime]] = field(default_factory=dict)  # tag -> digest -> set at
    manifest_pushed: dict[str, datetime] = field(default_factory=dict)  # digest -> revision link's time

    def untagged_since(self, digest: str) -> datetime | None:
        return untagged_since(digest, self.manifest_pushed.get(digest), self.tag_history, self.tag_pushed)


def read_times(s3: Any, bucket: str, repository: str) -> RepositoryTimes:
    prefix = f"{REPOSITORIES}{repository}/_manifests/"
    times = RepositoryTimes()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rest, when = obj["Key"][len(prefix) :], obj["LastModified"]
            if m := _TAG_CURRENT.match(rest):
                times.tag_pushed[m["tag"]] = when
            elif m := _TAG_INDEX.match(rest):
                times.tag_history.setdefault(m["tag"], {})[f"{m['algo']}:{m['hex']}"] = when
            elif m := _REVISION.match(rest):
                times.manifest_pushed[f"{m['algo']}:{m['hex']}"] = when
    return times


def untagged_since(
    digest: str,
    pushed: datetime | None,
    tag_history: Mapping[str, Mapping[str, datetime]],
    tag_pushed: Mapping[str, datetime],
) -> datetime | None:
    """Since when a manifest no tag names any more has been untagged, at the latest; None: unknown.

    The latest of: when it was last pushed into the repository, and, for every tag whose history holds it,
    when that tag left it. A tag T set to this digest at time t left it at the first push of T to another
    digest after t; T's history keeps only the last time T was set to each digest, so the earliest such
    time later than t (strictly: within one second the order is unknown) is an upper bound, exact when the
    tag moved on to new digests, and T's current push time bounds it too. So the answer is never earlier
    than the truth: an image is never deleted before it has been untagged for the days the policy says.
    A tag deleted since (with the image it named then) leaves no history; then the push time counts.
    """
    if pushed is None:
        return None
    latest = pushed
    for tag, history in tag_history.items():
        set_at = history.get(digest)
        if set_at is None:
            continue
        bounds = [when for d, when in history.items() if d != digest and when > set_at]
        if tag in tag_pushed:
            bounds.append(tag_pushed[tag])
        if not bounds:
            return None  # the tag still names it as far as storage shows: not untagged (or a race)
        latest = max(latest, min(bounds))
    return latest
