"""Benchmark (not a test): token issue latency and throughput for each path a login takes.

Starts a real OpenLDAP (lab/slapd.py) and the token service (`python -m auth`, gunicorn with its
default worker count, one per core it may use, TLS), then from `--clients` concurrent threads requests tokens
over HTTPS (`--requests` each, on a connection each client opens first: the TLS handshake is not
in the figures) for:

- robot: a CI robot whose token is stored as SHA-256 (no bcrypt);
- local: one local bcrypt user, logging in again and again (the verified-credential cache);
- ldap: one directory user, again and again (search-then-bind over StartTLS once, then the cache);
- cold: a different local user for every request (every one a bcrypt check: the cache cannot help).
- healthz: GET /healthz the same way, no credential and no token: the floor that gunicorn, TLS and Flask
  cost alone, below which no token path can go.

The repeated paths are warmed first (a few logins, not measured: each worker verifies once). The
bcrypt time is measured in the same run (one check at the users' cost, in this process, while the
service idles), and the cold path's target printed beside it: 0.9 x cores / bcrypt time. Prints
p50/p99 latency and tokens per second for each path from one run, with the load average before the
run. Figures depend on the machine and its load: report them with both, never assert on them.

The server and the load generator are kept apart: the service runs on `--server-cpus` (default: core
0) and this process, its client threads and slapd (the directory is another machine in production)
on `--client-cpus` (default: the other cores), set with sched_setaffinity and printed with the
figures; `--server-cpus all` shares every core (the old way). For each path it also prints the
service's own CPU time per token (user + system time of the gunicorn master and workers over the
path, from /proc, divided by the tokens issued): the service time, and the throughput that cores'
worth of it allows (1 / service time per core the service has), beside the queueing arithmetic (50
clients in a closed loop: p50 ~ 50 / throughput, so p99 <= 20 ms needs about 2500 tokens/s). At the end,
the robot path run in this process without gunicorn, TLS or sockets, and the RS256 signature alone: where
a token's service time goes. `--profile` prints cProfile's top functions of that path and exits.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bcrypt  # noqa: E402

from auth.local import hash_secret, new_robot_token, robot_token_hash  # noqa: E402
from auth.serve import usable_cores  # noqa: E402
from auth.tokens import create_signing_pair  # noqa: E402
from lab import supervisor  # noqa: E402
from lab.pki import create_pki  # noqa: E402
from lab.slapd import Directory, DirectoryUser, start_slapd  # noqa: E402
from lab.supervisor import Service  # noqa: E402
from tests.helpers.bench import concurrent_gets  # noqa: E402

SERVICE = "registry.bench"
ROBOT = ("ci-robot", new_robot_token())
USERS = {"local": ("ci-local", "local-Correct-Horse-1"), "ldap": ("alice", "alice-Correct-Horse-1"), "robot": ROBOT}
Who = Callable[[int, int], tuple[str, str]]  # (client, request) -> (user, password)


def cold_user(client: int, request: int, per_client: int) -> tuple[str, str]:
    n = client * per_client + request
    return f"cold-{n}", f"cold-{n}-Correct-Horse"


def bcrypt_seconds(cost: int, rounds: int = 10) -> float:
    """One bcrypt check at `cost` in this process: the median of `rounds`."""
    hashed = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(rounds=cost))
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        bcrypt.checkpw(b"bench-password", hashed)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bcrypt_rate(cost: int, threads: int, seconds: float = 3.0) -> float:
    """Checks per second with `threads` threads checking at once (bcrypt releases the GIL): what the
    machine gives bcrypt right now, other load included."""
    hashed = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(rounds=cost))
    done = [0] * threads
    deadline = time.perf_counter() + seconds

    def spin(i: int) -> None:
        while time.perf_counter() < deadline:
            bcrypt.checkpw(b"bench-password", hashed)
            done[i] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(spin, range(threads)))
    return sum(done) / seconds


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in the process group (the gunicorn master and its
    workers), from /proc/PID/stat."""
    ticks = sum(int(f[11]) + int(f[12]) for _, f in supervisor.process_stats() if int(f[2]) == pgid)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_set(text: str) -> set[int]:
    """`0`, `1,3`, `0-1` or `all` as a set of core numbers this process may use."""
    allowed = os.sched_getaffinity(0)
    if text == "all":
        return set(allowed)
    cores: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    if not cores <= allowed:
        raise SystemExit(f"cores {sorted(cores - allowed)} are not usable here (usable: {sorted(allowed)})")
    return cores


def run_path(
    port: int, ca: str, who: Who, clients: int, per_client: int, started: Callable[[], None] | None = None
) -> tuple[list[float], float]:
    """Each client connects (TLS handshake and one /healthz, not timed), then all send their requests at once; the
    latency of each request and the wall time from the common start to the last answer."""
    path = f"/auth?service={SERVICE}&scope=repository:team-a/app:pull,push"

    def basic(client: int, i: int) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(":".join(who(client, i)).encode()).decode()}

    return concurrent_gets(port, ca, path, basic, clients, per_client, warm_path="/healthz", started=started)


def run_floor(
    port: int, ca: str, clients: int, per_client: int, started: Callable[[], None] | None = None
) -> tuple[list[float], float]:
    """GET /healthz the same way: no credential, no token, no signature; what gunicorn, TLS and Flask cost alone."""
    return concurrent_gets(port, ca, "/healthz", {}, clients, per_client, warm_path="/healthz", started=started)


def profile(work: Path, key: Path, cert: Path, requests: int = 2000, listing: bool = True) -> None:
    """The robot path's own cost in this process, without gunicorn, TLS or sockets: the app (Flask, the
    checks, the RS256 signature, the audit line) per request, the signature alone, and cProfile's top
    functions. Everything else the service's CPU time per token holds is gunicorn's and TLS's."""
    import cProfile
    import io
    import logging
    import pstats

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from werkzeug.test import EnvironBuilder

    from auth.config import parse_config
    from auth.serve import authenticators
    from auth.server import AUDIT_LOGGER, create_app
    from auth.tokens import load_private_key

    name, token = ROBOT
    data = {
        "issuer": "registry-fleet-bench", "service": SERVICE, "signing_key": str(key), "signing_cert": str(cert),
        "policy": {
            "teams": {"team-a": {"namespaces": ["team-a"]}},
            "robots": {name: {"namespace": "team-a/ci", "actions": ["pull", "push"],
                              "expires": "2099-01-01T00:00:00Z", "token_hash": robot_token_hash(token)}},
        },
    }  # fmt: skip
    config = parse_config(data, work)
    app = create_app(config, authenticators(config))
    audit = logging.getLogger(AUDIT_LOGGER)
    audit.handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]  # noqa: SIM115 (closed at exit)
    audit.propagate = False
    header = "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()
    query = f"service={SERVICE}&scope=repository:team-a/ci/app:pull,push"
    environ = EnvironBuilder(path="/auth", query_string=query, headers={"Authorization": header}).get_environ()

    def call() -> None:
        status: list[str] = []
        b"".join(app(dict(environ), lambda s, h, e=None: status.append(s)))
        assert status == ["200 OK"], status

    for _ in range(200):
        call()
    t = time.thread_time()
    for _ in range(requests):
        call()
    per_request = (time.thread_time() - t) / requests
    signing = load_private_key(key)
    t = time.thread_time()
    for _ in range(requests):
        signing.sign(b"x" * 600, padding.PKCS1v15(), hashes.SHA256())
    per_sign = (time.thread_time() - t) / requests
    print(
        f"robot path in this process ({requests} requests, CPU time): app {per_request * 1000:.3f} ms a token, "
        f"of which the RSA-2048 signature {per_sign * 1000:.3f} ms"
    )
    if not listing:
        return
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        call()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:4000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=10, help="requests per client per path")
    parser.add_argument("--bcrypt-cost", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn worker")
    parser.add_argument("--workers", type=int, default=0, help="gunicorn workers (default 0: one per server core)")
    parser.add_argument(
        "--paths",
        default="robot,local,ldap,cold,healthz",
        help="which paths to measure (default all; healthz: the floor)",
    )
    parser.add_argument("--server-cpus", default="0", help="the service's cores (default 0; all: every core)")
    parser.add_argument("--client-cpus", default="", help="cores of the clients and slapd (default: the others)")
    parser.add_argument("--profile", action="store_true", help="profile the robot path in process, then exit")
    args = parser.parse_args()
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
            profile(Path(tmp), *create_signing_pair(Path(tmp) / "signing"))
        return
    server_cpus = cpu_set(args.server_cpus)
    client_cpus = cpu_set(args.client_cpus) if args.client_cpus else (os.sched_getaffinity(0) - server_cpus)
    if not client_cpus:
        client_cpus = server_cpus  # one core only, or --server-cpus all: everything shares
    os.sched_setaffinity(0, client_cpus)  # this process, its threads and slapd (started below) run there
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        work = Path(tmp)
        pki = create_pki(work / "pki", ["127.0.0.1", "localhost"])
        slapd = start_slapd(
            work / "slapd", pki, Directory(users=(DirectoryUser("alice", "Alice", USERS["ldap"][1], ("team-a-devs",)),))
        )
        service: Service | None = None
        try:
            key, cert = create_signing_pair(work / "signing")
            cold = [cold_user(c, i, args.requests) for c in range(args.clients) for i in range(args.requests)]
            with ThreadPoolExecutor(usable_cores()) as pool:  # bcrypt releases the GIL
                cold_hashes = list(pool.map(lambda u: hash_secret(u[1], args.bcrypt_cost), cold))
            users = {USERS["local"][0]: hash_secret(USERS["local"][1], args.bcrypt_cost)}
            users.update({name: h for (name, _), h in zip(cold, cold_hashes, strict=True)})
            ldap = {**slapd.settings().model_dump(mode="json"), "bind_password": slapd.bind_password}
            config = {
                "issuer": "registry-fleet-bench",
                "service": SERVICE,
                "signing_key": str(key),
                "signing_cert": str(cert),
                "bcrypt_min_cost": args.bcrypt_cost,
                "users": {name: {"password_hash": h} for name, h in users.items()},
                "ldap": ldap,
                # Lockout would trip on nothing here (every request succeeds); keep the defaults.
                "policy": {
                    "teams": {
                        "team-a": {
                            "namespaces": ["team-a"],
                            "members": dict.fromkeys(users, "developer"),
                            "groups": {"team-a-devs": "developer"},
                        }
                    },
                    "robots": {
                        ROBOT[0]: {
                            "namespace": "team-a/ci",
                            "actions": ["pull", "push"],
                            "expires": "2099-01-01T00:00:00Z",
                            "token_hash": robot_token_hash(ROBOT[1]),
                        }
                    },
                },
            }
            (work / "auth.json").write_text(json.dumps(config))
            port = supervisor.free_port()
            service = Service(
                "auth",
                [
                    "taskset", "-c", ",".join(map(str, sorted(server_cpus))),
                    sys.executable, "-m", "auth", "--config", str(work / "auth.json"), "--bind", f"127.0.0.1:{port}",
                    "--certfile", str(pki.server_cert), "--keyfile", str(pki.server_key),
                    "--threads", str(args.threads), "--workers", str(args.workers),
                ],
                str(work / "auth.log"),
                {"https": port},
                env=supervisor.clean_env({}),
            )  # fmt: skip
            supervisor.start(service, cwd=ROOT)
            supervisor.wait_ready(service, lambda: supervisor.port_open(port), timeout=30)
            cores = len(server_cpus)
            bcrypt_s = bcrypt_seconds(args.bcrypt_cost)
            load = os.getloadavg()
            print(
                f"token service bench: {args.clients} concurrent clients x {args.requests} requests per path, "
                f"bcrypt cost {args.bcrypt_cost} ({bcrypt_s * 1000:.1f} ms a check here), {cores} cores, "
                f"{args.workers or cores} gunicorn workers x {args.threads} threads, one run; load average before: "
                f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
                f"  server on core(s) {sorted(server_cpus)}, clients and slapd on core(s) {sorted(client_cpus)}"
                + ("  (shared: clients compete with the server)" if server_cpus & client_cpus else "")
            )
            for label in ("robot", "local", "ldap"):  # warm: each worker verifies each account once
                run_path(port, str(pki.ca_cert), lambda c, i, u=USERS[label]: u, 16, 4)
            paths: dict[str, Who] = {label: (lambda c, i, u=USERS[label]: u) for label in ("robot", "local", "ldap")}
            paths["cold"] = lambda c, i: cold_user(c, i, args.requests)
            target = args.clients / 0.020  # Little: clients = throughput x time in the system
            print(
                f"  queueing: {args.clients} clients in a closed loop wait on each other, p50 ~ {args.clients} / "
                f"throughput; p99 <= 20 ms needs about {target:.0f} tokens/s: at most {cores / target * 1000:.2f} ms "
                f"of service CPU a token on {cores} core(s)"
            )
            for label in [*paths, "healthz"]:
                if label not in args.paths.split(","):
                    continue
                cpu = [0.0]

                def timed(cpu: list[float] = cpu, pid: int = service.pid) -> None:
                    cpu[0] = group_cpu_seconds(pid)

                if label == "healthz":
                    latencies, wall = run_floor(port, str(pki.ca_cert), args.clients, args.requests, timed)
                else:
                    latencies, wall = run_path(port, str(pki.ca_cert), paths[label], args.clients, args.requests, timed)
                per_token = (group_cpu_seconds(service.pid) - cpu[0]) / len(latencies)
                q = statistics.quantiles(latencies, n=100)
                print(
                    f"  {label:7}  p50 {q[49] * 1000:7.1f} ms   p99 {q[98] * 1000:7.1f} ms   "
                    f"{len(latencies) / wall:6.1f} tokens/s   ({len(latencies)} requests in {wall:.1f} s); "
                    f"service CPU {per_token * 1000:.2f} ms a token: at most {cores / per_token:.0f} tokens/s "
                    f"on {cores} core(s)"
                )
            # One client at a time: the service's own latency, without 50 clients queueing on the cores.
            for label in ("robot", "local", "ldap"):
                if label not in args.paths.split(","):
                    continue
                latencies, _ = run_path(port, str(pki.ca_cert), paths[label], 1, 100)
                q = statistics.quantiles(latencies, n=100)
                print(f"  {label:5}  1 client x 100: p50 {q[49] * 1000:6.1f} ms   p99 {q[98] * 1000:6.1f} ms")
            rate = bcrypt_rate(args.bcrypt_cost, cores)
            print(f"  bcrypt alone, {cores} threads in this process now: {rate:.1f} checks/s")
            print(
                f"  cold target: 0.9 x {cores} cores / {bcrypt_s * 1000:.1f} ms = {0.9 * cores / bcrypt_s:.1f} tokens/s"
            )
            print("  where a token's service time goes (in this process, on the clients' core):", end=" ")
            profile(work, key, cert, requests=1000, listing=False)
            print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            if service is not None:
                supervisor.stop(service)
            slapd.stop()


if __name__ == "__main__":
    main()
