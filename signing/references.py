"""Repository names, tags and digests as distribution's reference grammar defines them.

A repository path is one or more `/`-separated components of lower-case letters and digits joined by
`.`, `_`, `__` or dashes, 255 characters at most; a tag `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; a digest,
here, only `sha256:` and 64 lower-case hex digits (what the registry computes and cosign signs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"^{COMPONENT}(?:/{COMPONENT})*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_REPOSITORY = 255


class ImageReferenceError(ValueError):
    """A malformed image reference; the message says which part and what is allowed."""


def valid_repository(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY and bool(REPOSITORY.match(name))


def valid_reference(reference: str) -> bool:
    """A tag or a sha256 digest."""
    return bool(TAG.match(reference) or DIGEST.match(reference))


@dataclass(frozen=True)
class ImageRef:
    repository: str  # the path in the registry: team-a/app
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when given, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return self.repository + (f"@{self.digest}" if self.digest else f":{self.tag}")


def parse_image(text: str, registry_host: str | None = None) -> ImageRef:
    """`REPO[:TAG|@DIGEST]` (no tag: latest). A leading `HOST/` is accepted when it is `registry_host`."""
    rest = text.strip()
    first, sep, after = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if registry_host is None or first.lower() != registry_host.lower():
            where = f"this stack's registry is {registry_host}" if registry_host else "give the repository path only"
            raise ImageReferenceError(f"image {text!r}: names the registry {first}; {where}")
        rest = after
    digest = tag = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not DIGEST.match(digest):
            raise ImageReferenceError(f"image {text!r}: {digest[:80]!r} is not a digest (sha256: and 64 hex digits)")
    name, sep, maybe_tag = rest.rpartition(":")
    if sep and "/" not in maybe_tag:
        rest, tag = name, maybe_tag
        if not TAG.match(tag):
            raise ImageReferenceError(f"image {text!r}: tag {tag[:80]!r}: letters, digits, _ . - (at most 128)")
    if not valid_repository(rest):
        raise ImageReferenceError(
            f"image {text!r}: repository {rest[:80]!r} is not a valid name "
            "(lower-case letters and digits, separated by . _ - or /; at most 255 characters)"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(rest, tag, digest)
