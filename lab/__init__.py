"""The local lab: real registry, S3 (moto), CDN edge and PKI on loopback."""
