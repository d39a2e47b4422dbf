"""Benchmark (not a test): what the signature gate costs, through the lab's load balancer (nginx).

Starts the lab of a stack that protects a namespace (dev: `team-a/release`; the lab runs one gate per
registry instance and nginx routes protected manifest reads to them, as the ALB does), then:
  - manifest GET latency, `--clients` concurrent HTTPS clients (keep-alive, a reader's token), in the
    protected namespace (a signed image: verification cached after the first request per gate worker) and in
    an unprotected one (`team-a/bench`, straight to the registries); p50, p99 and requests per second, in
    alternating rounds (unprotected, protected, protected, unprotected...) so that drift hits both alike;
  - push and pull throughput of an image of `--size-mb` random bytes (fresh contents per push, a fresh
    skopeo HOME per copy: no blob mounted or skipped) into and out of both namespaces (the protected pull is
    of the image just signed: its manifest read through the gate, verified there for the first time, the
    `.sig` manifest and payload read from the registry, uncached).
Prints the machine's load (`/proc/loadavg`) before and after. Figures depend on the machine: report them
with it, never assert on them.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.signing import lab_target, sign  # noqa: E402
from infra.settings import load_stack_settings, signed_namespaces  # noqa: E402
from lab.accounts import registry_token  # noqa: E402
from lab.image import build_image  # noqa: E402
from lab.lab import Lab, LabState  # noqa: E402
from signing.cosign import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST  # noqa: E402
from signing.references import ImageRef  # noqa: E402
from tests.helpers.bench import concurrent_gets  # noqa: E402

MB = 1_000_000
READER = "team-a-reader"
ACCEPT = f"{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_MANIFEST}"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def token(state: LabState, account: str, repos: list[str]) -> str:
    secret = str(state.account(account)["password"])
    scopes = [f"repository:{r}:pull" for r in repos]
    status, body = registry_token(
        state.token["realm"], state.token["service"], state.ca_file, (account, secret), scopes
    )
    if status != 200:
        raise SystemExit(f"no token for {account}: {status} {body}")
    return str(body["token"])


def manifest_gets(state: LabState, path: str, bearer: str, clients: int, per_client: int) -> tuple[list[float], float]:
    """GETs of `path` through the load balancer (connections made before the clock starts)."""
    port = int(state.registry_url.rsplit(":", 1)[1])
    headers = {"Authorization": f"Bearer {bearer}", "Accept": ACCEPT}
    return concurrent_gets(port, state.ca_file, path, headers, clients, per_client, connect_first=True)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)


def skopeo_copy(state: LabState, src: str, dest: str, home: Path) -> float:
    """One `skopeo copy` with its own HOME (no blob-info cache shared between copies); seconds."""
    home.mkdir(parents=True)
    creds = f"{state.username}:{state.password}"
    argv = ["skopeo", "copy", "--quiet"]
    if src.startswith("docker://"):
        argv += ["--src-cert-dir", state.cert_dir, "--src-creds", creds]
    if dest.startswith("docker://"):
        argv += ["--dest-cert-dir", state.cert_dir, "--dest-creds", creds]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    t = time.perf_counter()
    proc = subprocess.run([*argv, src, dest], capture_output=True, text=True, env=env)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"skopeo copy {src} {dest} failed: {proc.stderr[-1500:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="manifest GETs per client per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per namespace (alternating)")
    parser.add_argument("--size-mb", type=int, default=100, help="image size for push/pull")
    args = parser.parse_args()
    settings = load_stack_settings(args.stack)
    namespaces = signed_namespaces(settings)
    if not namespaces:
        raise SystemExit(f"stack {args.stack} protects no namespace: no gate to measure")
    print(f"machine: {os.cpu_count()} CPUs, load average {load()} (1, 5, 15 min) before the lab starts")
    with tempfile.TemporaryDirectory(prefix="bench-sign-") as tmp:
        work = Path(tmp)
        state = Lab(settings, work / "lab").up()
        try:
            host = state.registry_url.removeprefix("https://")
            protected = next(ns for ns in namespaces if ns.startswith(state.namespace + "/"))
            repos = {"unprotected": f"{state.namespace}/bench", "protected": f"{protected}/bench"}
            small = build_image(work / "small", "1", [{"a.bin": 16 * 1024}])
            for repo in repos.values():
                skopeo_copy(state, small, f"docker://{host}/{repo}:1", work / f"home-small-{repo.replace('/', '-')}")
            sign(lab_target(state, None), ImageRef(repos["protected"], "1", None), recursive=True, out=io.StringIO())
            bearer = token(state, READER, list(repos.values()))

            # Manifest GETs: warm up each path (TLS, the gates' caches in every worker), then alternating rounds.
            results: dict[str, list[float]] = {"unprotected": [], "protected": []}
            round_p50: dict[str, list[float]] = {"unprotected": [], "protected": []}
            walls: dict[str, float] = {"unprotected": 0.0, "protected": 0.0}
            for repo in repos.values():
                manifest_gets(state, f"/v2/{repo}/manifests/1", bearer, args.clients, 5)
            order = [k for i in range(args.rounds) for k in (("unprotected", "protected") if i % 2 == 0
                                                             else ("protected", "unprotected"))]  # fmt: skip
            for kind in order:
                latencies, wall = manifest_gets(
                    state, f"/v2/{repos[kind]}/manifests/1", bearer, args.clients, args.requests
                )
                results[kind] += latencies
                round_p50[kind].append(pct(latencies, 50))
                walls[kind] += wall
            load_after_gets = load()

            # Push and pull: fresh random contents per push; the namespaces alternate first, like the GETs.
            pushes: dict[str, list[float]] = {"unprotected": [], "protected": []}
            pulls: dict[str, list[float]] = {"unprotected": [], "protected": []}
            repulls: dict[str, list[float]] = {"unprotected": [], "protected": []}
            for i, kind in enumerate(order):
                image = build_image(work / f"big-{i}", "1", [{"payload.bin": args.size_mb * MB}])
                target = f"docker://{host}/{repos[kind]}:big-{i}"
                pushes[kind].append(skopeo_copy(state, image, target, work / f"home-push-{i}"))
                if kind == "protected":
                    ref = ImageRef(repos[kind], f"big-{i}", None)
                    sign(lab_target(state, None), ref, recursive=True, out=io.StringIO())
                pulls[kind].append(skopeo_copy(state, target, f"oci:{work / f'back-{i}'}:1", work / f"home-pull-{i}"))
                # Again, as the next node pulling the same image does: the gates' verification is now cached.
                repulls[kind].append(
                    skopeo_copy(state, target, f"oci:{work / f'again-{i}'}:1", work / f"home-again-{i}")
                )

            n = args.clients * args.requests * args.rounds
            print(
                f"gate bench, stack {args.stack}: protected {repos['protected']} (signed), unprotected "
                f"{repos['unprotected']}, through nginx (two registry instances, a gate in front of each)"
            )
            print(
                f"manifest GET, {args.clients} concurrent clients, {n} requests per namespace in {args.rounds} rounds:"
            )
            base_p50 = pct(results["unprotected"], 50)
            base_p99 = pct(results["unprotected"], 99)
            for kind in ("unprotected", "protected"):
                p50, p99 = pct(results[kind], 50), pct(results[kind], 99)
                print(
                    f"  {kind:11}  p50 {p50 * 1000:7.1f} ms ({p50 / base_p50:4.2f}x)   p99 {p99 * 1000:7.1f} ms "
                    f"({p99 / base_p99:4.2f}x)   {len(results[kind]) / walls[kind]:5.0f} req/s   "
                    f"p50 per round: {', '.join(f'{v * 1000:.0f}' for v in round_p50[kind])} ms"
                )
            print(f"  load average after the GETs: {load_after_gets}")
            size = args.size_mb
            print(
                f"push and pull of a {size} MB image (one layer, random; fresh per push), skopeo through nginx "
                f"(blobs via the edge), {args.rounds} rounds, MB/s of the total time and per round:"
            )
            for kind in ("unprotected", "protected"):
                push_mbs, pull_mbs = (
                    size * len(pushes[kind]) / sum(pushes[kind]),
                    size * len(pulls[kind]) / sum(pulls[kind]),
                )
                ratio = ""
                if kind == "protected":
                    u_push = size * len(pushes["unprotected"]) / sum(pushes["unprotected"])
                    u_pull = size * len(pulls["unprotected"]) / sum(pulls["unprotected"])
                    ratio = f"   ({push_mbs / u_push:4.2f}x, {pull_mbs / u_pull:4.2f}x of unprotected)"
                rounds = ", ".join(
                    f"{size / a:.0f}/{size / b:.0f}" for a, b in zip(pushes[kind], pulls[kind], strict=True)
                )
                print(f"  {kind:11}  push {push_mbs:6.1f}   pull {pull_mbs:6.1f}{ratio}   rounds push/pull: {rounds}")
            again = {kind: size * len(repulls[kind]) / sum(repulls[kind]) for kind in repulls}
            print(
                f"  the same images pulled again (the protected one's signature already verified): unprotected "
                f"{again['unprotected']:6.1f}   protected {again['protected']:6.1f} MB/s "
                f"({again['protected'] / again['unprotected']:4.2f}x of unprotected)"
            )
            print(f"machine load average at the end: {load()}")
        finally:
            Lab.down(work / "lab")


if __name__ == "__main__":
    main()
