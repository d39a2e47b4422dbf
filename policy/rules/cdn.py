"""Practice 9, CDN for blobs: CloudFront serves blobs read-only, by signed URLs, from the bucket through
origin access control."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from policy.graph import DISTRIBUTION, Res, as_list, cache_behaviors, is_unknown, mapping, of_type, prop
from policy.registry import Finding, rule

READ_METHODS = frozenset({"GET", "HEAD"})


@rule("cdn-signed-urls", 9, "Every CloudFront cache behavior requires URLs signed by a trusted key group.")
def find_cdn_signed_urls(resources: Sequence[Res]) -> Iterator[Finding]:
    for d in of_type(resources, DISTRIBUTION):
        for where, behavior in cache_behaviors(d):
            groups = behavior.get("trustedKeyGroups")
            if not is_unknown(groups) and not [g for g in as_list(groups) if g]:
                yield d.name, f"{where}.trustedKeyGroups is {groups!r}: blob URLs would need no signature"


@rule("cdn-origin-access-control", 9, "Every CloudFront origin uses origin access control and an empty origin path.")
def find_cdn_origin_access_control(resources: Sequence[Res]) -> Iterator[Finding]:
    for d in of_type(resources, DISTRIBUTION):
        origins = prop(d, "origins")
        for i, origin in enumerate(map(mapping, [] if is_unknown(origins) else as_list(origins))):
            if not origin.get("originAccessControlId"):
                yield d.name, f"origins[{i}].originAccessControlId is {origin.get('originAccessControlId')!r}"
            path = origin.get("originPath")
            if path not in (None, "") and not is_unknown(path):
                yield d.name, f"origins[{i}].originPath is {path!r}, expected empty (the registry signs full keys)"


@rule("cdn-read-only", 9, "CloudFront allows viewers only GET and HEAD.")
def find_cdn_read_only(resources: Sequence[Res]) -> Iterator[Finding]:
    for d in of_type(resources, DISTRIBUTION):
        for where, behavior in cache_behaviors(d):
            methods = behavior.get("allowedMethods")
            if is_unknown(methods):
                continue
            if not as_list(methods) or set(map(str, as_list(methods))) - READ_METHODS:
                yield d.name, f"{where}.allowedMethods is {methods!r}, expected only GET and HEAD"
