"""User-data as EC2 receives it: the gzip of the `#cloud-config` text, base64-encoded.

cloud-init unpacks gzip itself; what EC2 limits to 16 KB is the raw (gzipped) bytes, about 40% of
the text's size, which leaves room for a second token signing certificate during a rotation and a
directory CA. `host.boot.render_host` refuses a host whose user-data would not fit.
"""

from __future__ import annotations

import base64
import gzip

USER_DATA_LIMIT_BYTES = 16384  # EC2: user data is limited to 16 KB, in raw form, before base64 encoding


def compress_user_data(text: str) -> bytes:
    """The bytes EC2 gets: gzip without a timestamp, so the same text always gives the same bytes
    (a changed byte would be a new launch template version and roll the fleet)."""
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def encode_user_data(text: str) -> str:
    """The launch template's `user_data`: base64 of the gzipped cloud-config."""
    return base64.b64encode(compress_user_data(text)).decode()


def decode_user_data(encoded: str) -> str:
    """The cloud-config text of a launch template's `user_data` (gzipped or not), e.g. for checks."""
    raw = base64.b64decode(encoded, validate=True)
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
