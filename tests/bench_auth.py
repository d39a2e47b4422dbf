"""Benchmark (not a test): token issue latency and throughput, LDAP beside local (htpasswd-like) users.

Starts a real OpenLDAP (lab/slapd.py) and the token service (`python -m auth`, gunicorn, TLS), then
from `--clients` concurrent threads requests tokens over HTTPS for a local bcrypt user and for a
directory user (search-then-bind over StartTLS). Prints p50/p99 latency and requests per second
for each path from one run. Figures depend on the machine: report them with it, never assert on them.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auth.local import hash_secret  # noqa: E402
from auth.tokens import create_signing_pair  # noqa: E402
from lab import supervisor  # noqa: E402
from lab.pki import create_pki  # noqa: E402
from lab.slapd import Directory, DirectoryUser, start_slapd  # noqa: E402
from lab.supervisor import Service  # noqa: E402
from tests.helpers.bench import concurrent_gets  # noqa: E402

SERVICE = "registry.bench"
USERS = {"local": ("ci-local", "local-Correct-Horse-1"), "ldap": ("alice", "alice-Correct-Horse-1")}


def run_path(port: int, ca: str, who: tuple[str, str], clients: int, per_client: int) -> tuple[list[float], float]:
    auth = "Basic " + base64.b64encode(f"{who[0]}:{who[1]}".encode()).decode()
    path = f"/auth?service={SERVICE}&scope=repository:team-a/app:pull,push"
    return concurrent_gets(port, ca, path, {"Authorization": auth}, clients, per_client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=10, help="requests per client per path")
    parser.add_argument("--bcrypt-cost", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        work = Path(tmp)
        pki = create_pki(work / "pki", ["127.0.0.1", "localhost"])
        slapd = start_slapd(
            work / "slapd", pki, Directory(users=(DirectoryUser("alice", "Alice", USERS["ldap"][1], ("team-a-devs",)),))
        )
        service: Service | None = None
        try:
            key, cert = create_signing_pair(work / "signing")
            ldap = {**slapd.settings().model_dump(mode="json"), "bind_password": slapd.bind_password}
            config = {
                "issuer": "registry-fleet-bench",
                "service": SERVICE,
                "signing_key": str(key),
                "signing_cert": str(cert),
                "bcrypt_min_cost": args.bcrypt_cost,
                "users": {USERS["local"][0]: {"password_hash": hash_secret(USERS["local"][1], args.bcrypt_cost)}},
                "ldap": ldap,
                # Lockout would trip on nothing here (every request succeeds); keep the defaults.
                "policy": {
                    "teams": {
                        "team-a": {
                            "namespaces": ["team-a"],
                            "members": {USERS["local"][0]: "developer"},
                            "groups": {"team-a-devs": "developer"},
                        }
                    }
                },
            }
            (work / "auth.json").write_text(json.dumps(config))
            port = supervisor.free_port()
            service = Service(
                "auth",
                [
                    sys.executable, "-m", "auth", "--config", str(work / "auth.json"), "--bind", f"127.0.0.1:{port}",
                    "--certfile", str(pki.server_cert), "--keyfile", str(pki.server_key), "--threads", "8",
                ],
                str(work / "auth.log"),
                {"https": port},
                env=supervisor.clean_env({}),
            )  # fmt: skip
            supervisor.start(service, cwd=ROOT)
            supervisor.wait_ready(service, lambda: supervisor.port_open(port), timeout=30)
            print(
                f"token service bench: {args.clients} concurrent clients x {args.requests} requests per path, "
                f"bcrypt cost {args.bcrypt_cost}, one gunicorn worker with 8 threads, one run"
            )
            for label in ("local", "ldap"):
                latencies, wall = run_path(port, str(pki.ca_cert), USERS[label], args.clients, args.requests)
                q = statistics.quantiles(latencies, n=100)
                print(
                    f"  {label:5}  p50 {q[49] * 1000:7.1f} ms   p99 {q[98] * 1000:7.1f} ms   "
                    f"{len(latencies) / wall:6.1f} tokens/s   ({len(latencies)} requests in {wall:.1f} s)"
                )
        finally:
            if service is not None:
                supervisor.stop(service)
            slapd.stop()


if __name__ == "__main__":
    main()
