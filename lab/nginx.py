"""nginx standing in for the ALB: TLS 1.2+ only, HTTP -> 301, HTTPS to the registries, verified.

In token mode `location = /auth` (the realm's path, host/contract.TOKEN_PATH) goes to the
token service over HTTPS, as the ALB's listener rule sends it to the token target group; nginx
adds the client to X-Forwarded-For, as the ALB does, so the service's lockout and `clients` rules
see the client, not the proxy. nginx connects to its upstreams from an address of its own
(`source_address`, 127.0.0.2: lab/overrides.LAB_LB_ADDRESS), the only address the token service
trusts to forward: a client on 127.0.0.1 that writes its own X-Forwarded-For is not believed.

On a stack that protects namespaces (token mode, `access.pullPolicies`), nginx routes to the signature
gates (one per registry instance, both in one upstream) exactly what the ALB's listener rules route to
the gate target group: `gate_routes()` of components/loadbalancer.py, translated rule by rule into one
nginx `map` on the request method and the path as the client sent it (`$request_uri` up to `?`, never
the decoded `$uri`: the ALB matches the raw path too): GET and HEAD of an odd path (the rule's regex) and
of `/v2/<ns>/*/manifests/*` and `/v2/<ns>/manifests/*` (ALB wildcards: `*` is any run of characters,
`/` included, `?` one character). Everything else goes to the registries as before.

Workers run as the user that runs the lab (nginx's default is an unprivileged account), so every
file of the lab can stay 0600 in a 0700 directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from host.contract import TOKEN_HEALTH_PATH, TOKEN_PATH


@dataclass(frozen=True)
class NginxSite:
    https_port: int
    http_port: int
    upstreams: tuple[int, ...]  # registry instances on 127.0.0.1
    cert_file: Path
    key_file: Path
    ca_file: Path  # the lab CA: nginx verifies the registries' certificates (an ALB would not)
    state_dir: Path  # pid, logs, temp files
    # nginx checks DNS names only (not IP SANs): verify the registries as "localhost".
    upstream_name: str = "localhost"
    token_port: int | None = None  # token mode: the token service on 127.0.0.1
    source_address: str = "127.0.0.1"  # where nginx connects to upstreams from (the LB's own address)
    worker_user: str | None = None  # `user` for the workers when nginx starts as root
    gate_upstreams: tuple[int, ...] = ()  # the signature gates on 127.0.0.1 (none: nothing is gated)
    gate_namespaces: tuple[str, ...] = ()  # the protected namespaces (infra.settings.protected_namespaces)


def _proxy_to(upstream: str, site: NginxSite) -> str:
    return f"""      proxy_pass https://{upstream};
      proxy_bind {site.source_address};
      proxy_http_version 1.1;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {site.ca_file};
      proxy_ssl_name {site.upstream_name};
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"""


def _token_service(site: NginxSite) -> tuple[str, str]:
    """The upstream and the location of the token service (nothing in htpasswd mode)."""
    if site.token_port is None:
        return "", ""
    upstream = f"""
  upstream token {{
    server 127.0.0.1:{site.token_port};
  }}
"""
    location = f"""
    # The realm: only this exact path reaches the token service (the ALB rule matches it alone;
    # its health path {TOKEN_HEALTH_PATH} stays internal).
    location = {TOKEN_PATH} {{
{_proxy_to("token", site)}
      proxy_connect_timeout 2s;
    }}
"""
    return upstream, location


def alb_glob_regex(pattern: str) -> str:
    """An ALB path pattern as an anchored PCRE: `*` any run of characters, `?` one, the rest literal."""
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + "$"


def gate_map(namespaces: tuple[str, ...]) -> str:
    """The `map`s choosing the upstream of a request: the gates for what `gate_routes` sends to the gate
    target group (its methods and its path patterns or regexes, in its order), the registries otherwise."""
    from components.loadbalancer import GATE_METHODS, gate_routes

    methods = "|".join(GATE_METHODS)
    lines = []
    for route in gate_routes(namespaces):
        patterns = [r[1:] if r.startswith("^") else f".*{r}" for r in route.path_regex]
        patterns += [alb_glob_regex(p) for p in route.path_values]
        lines.append(f"    # listener rule {route.suffix} (priority {route.priority})")
        lines += [f'    "~^({methods}) {_nginx_string(p)}" gate;' for p in patterns]
    rules = "\n".join(lines)
    return f"""
  # The path as the client sent it (no query string), as the ALB matches it.
  map $request_uri $lb_raw_path {{
    "~^([^?]*)" $1;
  }}
  # What the ALB's gate listener rules send to the gate target group (components/loadbalancer.py gate_routes).
  map "$request_method $lb_raw_path" $lb_upstream {{
    default registry;
{rules}
  }}
"""


def _nginx_string(text: str) -> str:
    """`text` inside an nginx double-quoted string: nginx reads `\\`, `\\"`, `\\t`, `\\n`... as escapes, so
    every backslash is doubled and a double quote escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def write_nginx_conf(site: NginxSite) -> Path:
    """nginx.conf in the site's state directory, with the temp directories it names; returns its path."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (site.state_dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = site.state_dir / "nginx.conf"
    conf.write_text(render_nginx_conf(site))
    return conf


def _servers(ports: tuple[int, ...]) -> str:
    # max_fails=0: nginx never takes an instance out of rotation for a failed request; a request that meets a
    # restarting instance is passed to the next one (proxy_next_upstream below). With passive marking (the
    # default max_fails=1, fail_timeout=10s), a rolling restart of both instances (a maintenance window)
    # could mark both down within the timeout, and every request answered 502 for those seconds although
    # an instance was serving: the ALB's health checks need several failures before they take a host out.
    return "\n".join(f"    server 127.0.0.1:{port} max_fails=0;" for port in ports)


def render_nginx_conf(site: NginxSite) -> str:
    d = site.state_dir
    servers = _servers(site.upstreams)
    token_upstream, token_location = _token_service(site)
    user = f"user {site.worker_user};\n" if site.worker_user else ""
    if bool(site.gate_upstreams) != bool(site.gate_namespaces):
        raise ValueError("NginxSite: gate_upstreams and gate_namespaces go together (both or neither)")
    gated = bool(site.gate_upstreams)
    gate_upstream = ""
    if gated:
        gate_upstream = f"\n  upstream gate {{\n{_servers(site.gate_upstreams)}\n  }}\n{gate_map(site.gate_namespaces)}"
    target = "$lb_upstream" if gated else "registry"
    return f"""# Rendered by lab/nginx.py: the lab's load balancer.
{user}worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  # The combined format and where each request went (a registry instance's or a gate's address).
  log_format lab '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                 '"$http_referer" "$http_user_agent" upstream=$upstream_addr';
  access_log {d}/nginx-access.log lab;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;

  upstream registry {{
{servers}
  }}
{token_upstream}{gate_upstream}
  server {{
    listen 127.0.0.1:{site.http_port};
    return 301 https://$host:{site.https_port}$request_uri;
  }}

  server {{
    listen 127.0.0.1:{site.https_port} ssl http2;
    ssl_certificate {site.cert_file};
    ssl_certificate_key {site.key_file};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers off;

    # Layers are streamed, not buffered, and may be gigabytes.
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    chunked_transfer_encoding on;
    proxy_read_timeout 900s;
    proxy_send_timeout 900s;
{token_location}
    location / {{
{_proxy_to(target, site)}
      # A dead instance: try the other one (before a request is sent, also for PATCH/POST). As the ALB's
      # health check (host.contract.REGISTRY_HEALTH_CODES): no answer sends the request elsewhere, a 503
      # does not (every instance answers 503 UNAVAILABLE while S3 is unreachable: the client gets it as it is).
      proxy_next_upstream error timeout http_502;
      proxy_connect_timeout 2s;
    }}
  }}
}}
"""
