"""A minimal BoltDB (bbolt) file writer: nested buckets of byte keys and values, written in one go.

Trivy's vulnerability database is a bbolt file. The lab and the tests build a small one from fixture CVEs
(lab/trivy_db.py). PyPI has no usable writer: `bolt-python` is an unrelated array library, and `boltdb` 0.0.2
(2020, unmaintained) writes meta pages whose checksum bbolt rejects (tried here: Trivy 0.59.1 fails with
"failed to open db: checksum error"; the package's own close also fails with EBADF). So this module writes
the format itself; tests/test_trivy_db.py checks it by reading it back here and by Trivy reading it.

The file layout (bbolt's, page size 4096, little-endian):
  page 0 and 1   meta pages: magic 0xED0CDAED, version 2, page size, flags, the root bucket
                 {root page, sequence}, the freelist page, the high-water page id, txid, and the FNV-1a 64
                 checksum of the meta fields before it
  page 2         an empty freelist
  page 3...      one leaf page per bucket (spanning `overflow` more pages when it is larger than a page):
                 16-byte page header {id, flags, count, overflow}, then `count` 16-byte element headers
                 {flags, pos, ksize, vsize} (pos: from the element header to its key), then keys and values
A nested bucket is a leaf element with flag 0x01 whose value is its 16-byte header {root page, sequence}. Every
bucket gets its own page (no inline buckets, no branch pages): simple, and bbolt reads it the same way.
Keys within a page are sorted bytewise, as bbolt's cursors expect.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Union

PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
VERSION = 2
BRANCH, LEAF, META, FREELIST = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF_FLAG = 0x01
PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
BUCKET = struct.Struct("<QQ")  # root page id, sequence
META_FIELDS = struct.Struct("<IIII QQ QQQ")  # magic, version, page size, flags, root{root, seq}, freelist, pgid, txid
MAX_ELEMENTS = 0xFFFF  # a page header counts its elements in 16 bits

Tree = Mapping[bytes, Union[bytes, "Tree"]]


class BoltError(ValueError):
    """A tree this writer cannot store (a key that is empty or too many elements in one bucket)."""


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _pages(size: int) -> int:
    return max(1, -(-size // PAGE_SIZE))


class _Writer:
    def __init__(self) -> None:
        self.next_page = 3  # 0, 1: meta; 2: freelist
        self.pages: list[tuple[int, bytes]] = []

    def bucket(self, tree: Tree, path: str) -> int:
        """Write `tree` (and its sub-buckets first) as one leaf page; returns its page id."""
        items: list[tuple[bytes, bytes, int]] = []
        for key in sorted(tree):
            if not isinstance(key, bytes) or not key:
                raise BoltError(f"{path}: keys must be non-empty bytes, got {key!r}")
            value = tree[key]
            if isinstance(value, bytes):
                items.append((key, value, 0))
            else:
                root = self.bucket(value, f"{path}/{key.decode(errors='replace')}")
                items.append((key, BUCKET.pack(root, 0), BUCKET_LEAF_FLAG))
        if len(items) > MAX_ELEMENTS:
            raise BoltError(f"{path}: {len(items)} keys, over the {MAX_ELEMENTS} one page can hold")
        headers = PAGE_HEADER.size + ELEMENT.size * len(items)
        size = headers + sum(len(k) + len(v) for k, v, _ in items)
        count = _pages(size)
        page_id = self.next_page
        self.next_page += count
        body = bytearray(PAGE_HEADER.pack(page_id, LEAF, len(items), count - 1))
        data = bytearray()
        for i, (key, value, flags) in enumerate(items):
            element_at = PAGE_HEADER.size + ELEMENT.size * i
            body += ELEMENT.pack(flags, headers + len(data) - element_at, len(key), len(value))
            data += key + value
        page = bytes(body + data)
        self.pages.append((page_id, page + b"\0" * (count * PAGE_SIZE - len(page))))
        return page_id


def _meta_page(page_id: int, root: int, high_water: int, txid: int) -> bytes:
    fields = META_FIELDS.pack(MAGIC, VERSION, PAGE_SIZE, 0, root, 0, 2, high_water, txid)
    meta = fields + struct.pack("<Q", fnv1a64(fields))
    page = PAGE_HEADER.pack(page_id, META, 0, 0) + meta
    return page + b"\0" * (PAGE_SIZE - len(page))


def encode(tree: Tree) -> bytes:
    """The bytes of a bbolt file whose top-level buckets are `tree`'s keys (every value a sub-tree)."""
    for name, value in tree.items():
        if isinstance(value, bytes):
            raise BoltError(f"{name!r}: the top level holds buckets only, not values")
    writer = _Writer()
    root = writer.bucket(tree, "")
    high_water = writer.next_page
    freelist = PAGE_HEADER.pack(2, FREELIST, 0, 0)
    out = bytearray(_meta_page(0, root, high_water, 0) + _meta_page(1, root, high_water, 1))
    out += freelist + b"\0" * (PAGE_SIZE - len(freelist))
    for page_id, page in sorted(writer.pages):
        assert len(out) == page_id * PAGE_SIZE
        out += page
    return bytes(out)


def write(path: Path, tree: Tree) -> None:
    path.write_bytes(encode(tree))


def decode(data: bytes) -> dict[bytes, object]:
    """The tree of a file `encode` wrote (and of any bbolt file made only of leaf pages): a reader for tests."""
    metas = []
    for page_id in (0, 1):
        at = page_id * PAGE_SIZE + PAGE_HEADER.size
        fields = data[at : at + META_FIELDS.size]
        (checksum,) = struct.unpack_from("<Q", data, at + META_FIELDS.size)
        values = META_FIELDS.unpack(fields)
        if values[0] != MAGIC or values[1] != VERSION or checksum != fnv1a64(fields):
            raise BoltError(f"meta page {page_id}: bad magic, version or checksum")
        metas.append(values)
    meta = max(metas, key=lambda m: m[8])
    return _read_bucket(data, meta[4], meta[2])


def _read_bucket(data: bytes, page_id: int, page_size: int) -> dict[bytes, object]:
    start = page_id * page_size
    _, flags, count, _ = PAGE_HEADER.unpack_from(data, start)
    if flags != LEAF:
        raise BoltError(f"page {page_id}: flags {flags:#x}, this reader knows leaf pages only")
    tree: dict[bytes, object] = {}
    for i in range(count):
        element_at = start + PAGE_HEADER.size + ELEMENT.size * i
        eflags, pos, ksize, vsize = ELEMENT.unpack_from(data, element_at)
        key = data[element_at + pos : element_at + pos + ksize]
        value = data[element_at + pos + ksize : element_at + pos + ksize + vsize]
        if eflags & BUCKET_LEAF_FLAG:
            root, _ = BUCKET.unpack(value[: BUCKET.size])
            tree[key] = _read_bucket(data, root, page_size)
        else:
            tree[key] = value
    return tree
