"""Retention per team: delete what a namespace's policy no longer keeps, through the registry API.

`plan.py` decides (pure functions over one repository's tags and manifests), `storage.py` reads when tags
and manifests were pushed (the S3 listing of the registry's link files), `registry.py` talks to one
registry instance with tokens it mints itself (the token signing key the host already has), `run.py`
puts them together. Shipped to the hosts inside the token service's artifact (host/artifact.py):
`python -m retention` is what the maintenance window runs on a host, against its local registry.
"""
