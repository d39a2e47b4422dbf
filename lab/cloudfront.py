"""CloudFront signed URLs with a canned policy: sign like the registry, verify like CloudFront.

Pure functions, no I/O. The byte layout follows the CloudFront developer guide ("Create a signed URL
using a canned policy") and aws-sdk-go's `service/cloudfront/sign` (URLSigner.Sign), which the
registry's `cloudfront` storage middleware calls:

- the policy is `{"Statement":[{"Resource":"<url>","Condition":{"DateLessThan":{"AWS:EpochTime":<n>}}}]}`
  with no whitespace, Resource being the URL without the signing parameters (the SDK encodes it
  with HTML escaping off, so `&` stays `&`);
- the signature is RSA PKCS#1 v1.5 over SHA-1 of those bytes, base64 with `+`->`-`, `=`->`_`, `/`->`~`;
- the URL gets `?` (or `&` when it already has a query) + `Expires=<n>&Signature=<sig>&Key-Pair-Id=<id>`.

A canned policy travels only as its signature, so CloudFront rebuilds it from the request: the URL
minus `Expires`, `Signature`, `Key-Pair-Id` (and `Hash-Algorithm`, `Policy`), plus `Expires`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from dataclasses import dataclass
from urllib.parse import unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# Query parameters CloudFront reads for itself; they are never part of the signed Resource.
SIGNING_PARAMS = ("Expires", "Signature", "Key-Pair-Id")
RESERVED_PARAMS = (*SIGNING_PARAMS, "Policy", "Hash-Algorithm")

_TO_CF = str.maketrans({"+": "-", "=": "_", "/": "~"})
_FROM_CF = str.maketrans({"-": "+", "_": "=", "~": "/"})
_CF_ALPHABET = re.compile(r"[A-Za-z0-9\-_~]*")
_EXPIRES = re.compile(r"[0-9]{1,19}")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"SHA1": hashes.SHA1, "SHA256": hashes.SHA256}


def cf_b64encode(data: bytes) -> str:
    """Base64 with CloudFront's URL-safe replacements (`+`->`-`, `=`->`_`, `/`->`~`)."""
    return base64.b64encode(data).decode("ascii").translate(_TO_CF)


def cf_b64decode(text: str) -> bytes:
    """Inverse of `cf_b64encode`; raises ValueError on anything outside CloudFront's alphabet."""
    if not _CF_ALPHABET.fullmatch(text):
        raise ValueError("not CloudFront base64")
    try:
        return base64.b64decode(text.translate(_FROM_CF), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not CloudFront base64: {exc}") from exc


def canned_policy(resource: str, expires: int) -> bytes:
    """The exact policy bytes that are hashed and signed for a canned-policy URL."""
    # Go's encoder (HTML escaping off, as the SDK sets it) escapes quote, backslash, control
    # characters and U+2028/U+2029, and writes other characters as UTF-8, like this.
    quoted = json.dumps(resource, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    condition = '"Condition":{"DateLessThan":{"AWS:EpochTime":' + str(int(expires)) + "}}"
    return ('{"Statement":[{"Resource":' + quoted + "," + condition + "}]}").encode("utf-8")


@functools.lru_cache(maxsize=8)
def _private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("CloudFront signing key must be RSA")
    return key


@functools.lru_cache(maxsize=8)
def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`); ValueError otherwise."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("CloudFront public key must be RSA")
    return key


def _query_names(query: str) -> list[str]:
    return [unquote(part.split("=", 1)[0]) for part in query.split("&")] if query else []


def sign_url(url: str, key_pair_id: str, private_key_pem: bytes, expires: int) -> str:
    """Sign `url` with a canned policy valid until `expires`, as aws-sdk-go's URLSigner.Sign does."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    if not url.isascii():
        raise ValueError("URL contains non-ASCII characters, and should be encoded")
    query = url.partition("?")[2].partition("#")[0]
    for name in _query_names(query):
        if name in ("Expires", "Policy", "Signature", "Key-Pair-Id"):
            raise ValueError(f"{name} cannot be a query parameter for a signed URL")
    policy = canned_policy(url, expires)
    signature = _private_key(private_key_pem).sign(policy, padding.PKCS1v15(), hashes.SHA1())
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}Expires={int(expires)}&Signature={cf_b64encode(signature)}&Key-Pair-Id={key_pair_id}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def _deny(reason: str) -> Verdict:
    return Verdict(False, reason)


def verify_signed_url(url: str, key_pair_id: str, public_key_pem: bytes, now: int) -> Verdict:
    """Check a canned-policy signed URL the way CloudFront does, for one trusted key pair.

    `url` is the full URL as requested (scheme, host, path, query). Reasons are short and never
    contain the signature.
    """
    base, has_query, query = url.partition("#")[0].partition("?")
    if "://" not in base:
        return _deny("malformed URL")
    if not has_query:
        return _deny("missing Expires")
    kept: list[str] = []
    params: dict[str, str] = {}
    for part in query.split("&"):
        name, _, raw_value = part.partition("=")
        if name in RESERVED_PARAMS:
            if name in params:
                return _deny(f"duplicate {name}")
            params[name] = unquote(raw_value)
        else:
            kept.append(part)
    if "Policy" in params:
        return _deny("custom policy not supported")
    for name in SIGNING_PARAMS:
        if name not in params:
            return _deny(f"missing {name}")
    if params["Key-Pair-Id"] != key_pair_id:
        return _deny("unknown Key-Pair-Id")
    hash_name = params.get("Hash-Algorithm", "SHA1")
    if hash_name not in _HASHES:
        return _deny("unsupported Hash-Algorithm")
    if not _EXPIRES.fullmatch(params["Expires"]):
        return _deny("malformed Expires")
    expires = int(params["Expires"])
    try:
        signature = cf_b64decode(params["Signature"])
    except ValueError:
        return _deny("malformed Signature")
    # The Go signer appends "&" when the URL already had a "?", so an empty part is kept as is.
    resource = base + ("?" + "&".join(kept) if kept else "")
    policy = canned_policy(resource, expires)
    key = load_public_key(public_key_pem)
    algorithm = _HASHES[hash_name]()
    try:
        key.verify(signature, policy, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        return _deny(_why_not(key, signature, algorithm))
    if now >= expires:
        return _deny("expired")
    return Verdict(True, "ok")


def _why_not(key: rsa.RSAPublicKey, signature: bytes, algorithm: hashes.HashAlgorithm) -> str:
    """Tell a signature this key never made from a genuine one over a different policy.

    Verification has already failed; this only picks the reason. With a canned policy the signed
    Resource is not in the URL, so a changed path or Expires shows up as a signature that this key
    did make, over a policy other than the one rebuilt from the request.
    """
    try:
        key.recover_data_from_signature(signature, padding.PKCS1v15(), algorithm)
    except (InvalidSignature, ValueError):
        return "invalid signature"
    return "resource or Expires does not match the signature"
