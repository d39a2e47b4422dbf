"""The lab's nginx routes to the signature gates exactly what the ALB's gate listener rules route to the gate
target group (components/loadbalancer.py `gate_routes`): the rendered `map` is read back and compared, request
by request, with an evaluation of the listener rules as the ALB does it (methods, path patterns with `*` and
`?`, regexes; the path as sent, without the query string). No nginx runs here: tests/test_lab_signing.py sends
the same kinds of requests through the running lab.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from components.loadbalancer import GATE_METHODS, gate_routes
from lab.nginx import NginxSite, alb_glob_regex, render_nginx_conf

NAMESPACES = ("base", "team-a/release")
DIGEST = "sha256:" + "a" * 64
METHODS = ("GET", "HEAD", "PUT", "DELETE", "PATCH", "POST")
PATHS = (
    "/v2/",
    "/v2/_catalog",
    "/auth?service=registry&scope=repository:team-a/release/app:pull",
    "/v2/team-a/release/app/manifests/1",
    f"/v2/team-a/release/app/manifests/{DIGEST}",
    "/v2/team-a/release/manifests/1",
    "/v2/team-a/release/a/b/c/manifests/1",
    "/v2/team-a/release/app/manifests/1?x=%2F",
    "/v2/team-a/release/app/blobs/" + DIGEST,
    "/v2/team-a/release/app/blobs/uploads/",
    "/v2/team-a/release/app/blobs/uploads/0c1d?_state=abc",
    "/v2/team-a/release/app/tags/list",
    "/v2/team-a/releases/app/manifests/1",
    "/v2/team-a/release-candidate/app/manifests/1",
    "/v2/team-a/app/manifests/1",
    "/v2/team-a/manifests/1",
    "/v2/team-a%2Frelease%2Fapp/manifests/1",
    "/v2/team-a/release/app/%6Danifests/1",
    "/v2/%74eam-a/release/app/manifests/1",
    "/v2//team-a/release/app/manifests/1",
    "/v2/team-a/./release/app/manifests/1",
    "/v2/x/../team-a/release/app/manifests/1",
    "/v2/base/manifests/1",
    "/v2/base/debian/manifests/bookworm",
    "/v2/baseline/app/manifests/1",
    "/v2/Team-A/release/app/manifests/1",
    "/v2/team-b/app/tags/list?last=a%2Fb",
)


def site(namespaces: tuple[str, ...] = NAMESPACES) -> NginxSite:
    return NginxSite(
        https_port=8443,
        http_port=8080,
        upstreams=(5000, 5010),
        cert_file=Path("/lab/server.crt"),
        key_file=Path("/lab/server.key"),
        ca_file=Path("/lab/ca.crt"),
        state_dir=Path("/lab"),
        token_port=5002,
        gate_upstreams=(5003, 5013) if namespaces else (),
        gate_namespaces=namespaces,
    )


def map_patterns(conf: str) -> list[str]:
    """The regexes of the map that picks `gate`, as PCRE sees them (nginx's string escapes undone)."""
    block = conf.split("$lb_upstream {", 1)[1].split("}", 1)[0]
    found = re.findall(r'^\s*"~((?:[^"\\]|\\.)*)" gate;$', block, re.MULTILINE)
    return [re.sub(r"\\(.)", r"\1", p) for p in found]


def nginx_routes_to_gate(patterns: list[str], method: str, uri: str, whole_uri: bool = False) -> bool:
    key = f"{method} {uri if whole_uri else uri.split('?', 1)[0]}"  # map "$request_method $lb_raw_path"
    return any(re.search(p, key) for p in patterns)


def alb_routes_to_gate(namespaces: tuple[str, ...], method: str, uri: str) -> bool:
    """The listener rules as the ALB evaluates them: method condition AND path condition; a path pattern
    matches the whole path (`*` any characters, `/` included; `?` one), a regex searches it."""
    path = uri.split("?", 1)[0]
    if method not in GATE_METHODS:
        return False
    for route in gate_routes(namespaces):
        if any(re.search(r, path) for r in route.path_regex):
            return True
        if any(fnmatch.fnmatchcase(path, p) for p in route.path_values):  # [ ] never appear in them
            return True
    return False


def mismatches(
    patterns: list[str], namespaces: tuple[str, ...], whole_uri: bool = False
) -> list[tuple[str, str, bool]]:
    """(method, uri, the ALB's choice) wherever nginx's map chooses otherwise."""
    return [
        (m, p, alb)
        for m in METHODS
        for p in PATHS
        if (alb := alb_routes_to_gate(namespaces, m, p)) != nginx_routes_to_gate(patterns, m, p, whole_uri)
    ]


def test_nginx_routes_to_the_gates_exactly_what_the_alb_rules_route_to_the_gate() -> None:
    conf = render_nginx_conf(site())
    patterns = map_patterns(conf)
    assert len(patterns) == 1 + 2 * len(NAMESPACES)  # the odd-path regex, two patterns per namespace
    assert mismatches(patterns, NAMESPACES) == []
    # The table means something: both ways are taken, also by odd paths of other namespaces.
    assert alb_routes_to_gate(NAMESPACES, "GET", "/v2/team-a%2Frelease%2Fapp/manifests/1")
    assert alb_routes_to_gate(NAMESPACES, "HEAD", "/v2/team-a/release/manifests/1")
    assert not alb_routes_to_gate(NAMESPACES, "PUT", "/v2/team-a/release/app/manifests/1")
    assert not alb_routes_to_gate(NAMESPACES, "GET", "/v2/team-a/release/app/blobs/" + DIGEST)
    assert not alb_routes_to_gate(NAMESPACES, "GET", "/v2/team-a/releases/app/manifests/1")
    assert "proxy_pass https://$lb_upstream;" in conf
    assert "upstream gate {\n    server 127.0.0.1:5003 max_fails=0;\n    server 127.0.0.1:5013" in conf


def test_the_comparison_catches_a_map_without_the_odd_path_rule_or_matching_the_query_string() -> None:
    patterns = map_patterns(render_nginx_conf(site()))
    without_odd = [p for p in patterns if "%" not in p]
    assert ("GET", "/v2/team-a%2Frelease%2Fapp/manifests/1", True) in mismatches(without_odd, NAMESPACES)
    # Matching $request_uri whole (query string included), not the path: a `%` in a query is no odd path.
    query = "/v2/team-b/app/tags/list?last=a%2Fb"
    assert mismatches(patterns, NAMESPACES, whole_uri=True) == [("GET", query, False), ("HEAD", query, False)]


def test_alb_path_patterns_become_anchored_regexes() -> None:
    assert alb_glob_regex("/v2/team-a/*/manifests/*") == r"/v2/team\-a/.*/manifests/.*$"
    assert re.fullmatch(alb_glob_regex("/v2/a?c/x"), "/v2/abc/x")
    assert not re.match(alb_glob_regex("/v2/a.c/x"), "/v2/abc/x")  # a dot is literal


@pytest.mark.parametrize("namespaces", [(), ("team-a/release",)])
def test_without_protected_namespaces_nothing_changes(namespaces: tuple[str, ...]) -> None:
    conf = render_nginx_conf(site(namespaces))
    if namespaces:
        assert "map" in conf
    else:
        assert "map " not in conf and "upstream gate" not in conf and "proxy_pass https://registry;" in conf


def test_gates_without_namespaces_are_refused() -> None:
    broken = NginxSite(**{**site().__dict__, "gate_namespaces": ()})
    with pytest.raises(ValueError, match="gate_upstreams and gate_namespaces go together"):
        render_nginx_conf(broken)
