"""A registry host: what it is and what it runs, rendered from plain values.

- `contract`: its ports, paths, users, unit names, packages and services (one home for each);
- `registry_config`: the registry's config.yml; `token_config`: the token service's config;
- `boot`: the boot spec (`HostBoot`), validated once, and `render_host`: every file user-data writes
  and the `#cloud-config` text; `user_data`: what EC2 receives (gzip, base64);
- `template`: the one function that fills the scripts and units in `files/` (package data);
- `artifact`: the token service's code as hosts install it.
"""
