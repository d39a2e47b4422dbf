"""The metrics the hosts' CloudWatch agent collects, scraped from the real processes at the very targets its
config names (host/cloudwatch_agent.py): the lab's registry (Debian's docker-registry, its debug listener) and
its token service (`python -m auth`), and a token service with two gunicorn workers whose counts add up.

The lab listens on free ports; the targets name the hosts' ports (host/contract.py). Each test checks that a
target's port is the one the host's process listens on (the registry's rendered `http.debug.addr`, the token
service's unit), and scrapes the lab's process at the target's scheme, path and TLS name, so a path, a port, a
scheme or a certificate name that drifts fails here. The boot test scrapes the same targets on a booted host.
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from auth import metrics as token_metrics
from host.cloudwatch_agent import (
    REGISTRY_JOB,
    TOKEN_JOB,
    ScrapeTarget,
    agent_config,
    scrape_config,
    scrape_targets,
)
from host.contract import DEBUG_PORT, HOST_INTERNAL_NAME, TOKEN_SERVICE_PORT
from host.registry_config import RegistryConfig
from lab import supervisor
from lab.lab import STATE_FILE, Lab, LabState
from tests.helpers import settings_with
from tests.helpers.metrics import scrape

pytestmark = pytest.mark.lab

# What each job must show once it has served a request (the registry's HTTP counters appear with traffic).
EXPECTED = {
    REGISTRY_JOB: {"registry_http_requests_total", "registry_http_in_flight_requests"},
    TOKEN_JOB: set(token_metrics.METRIC_NAMES) - {token_metrics.DURATION},
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("lab-metrics")
    # The host certificate names HOST_INTERNAL_NAME, as the fleet's does: the agent checks the token service by it.
    state = Lab(settings_with("dev", {}), directory, hostnames=(HOST_INTERNAL_NAME,)).up()
    try:
        yield state
    finally:
        if (directory / STATE_FILE).exists():
            Lab.down(directory)


def target(job: str) -> ScrapeTarget:
    return next(t for t in scrape_targets(token_service=True) if t.job == job)


def test_the_rendered_scrape_and_agent_configs_name_the_same_jobs_and_loopback_only() -> None:
    targets = scrape_targets(token_service=True)
    scraped = yaml.safe_load(scrape_config(targets))
    jobs = {j["job_name"]: j for j in scraped["scrape_configs"]}
    assert set(jobs) == {REGISTRY_JOB, TOKEN_JOB}
    for t in targets:
        assert jobs[t.job]["static_configs"] == [{"targets": [t.address]}]
        assert t.address.startswith("127.0.0.1:"), f"{t.job}: {t.address} is not loopback"
    declared = agent_config("g", "n", targets)["logs"]["metrics_collected"]["prometheus"]["emf_processor"]
    assert {d["label_matcher"] for d in declared["metric_declaration"]} == {f"^{j}$" for j in jobs}


def test_the_registry_target_is_its_debug_listener(lab: LabState) -> None:
    t = target(REGISTRY_JOB)
    rendered = RegistryConfig(
        environment="dev", public_url="https://r", bucket="b", region="eu-west-1", listen_addr=":5000"
    )
    assert rendered.debug_addr == t.address == f"127.0.0.1:{DEBUG_PORT}", "hosts: the agent reads the debug listener"
    config = yaml.safe_load((Path(lab.state_dir) / "registry-a.yml").read_text())
    debug = config["http"]["debug"]
    assert debug["prometheus"] == {"enabled": True, "path": t.path}
    port = lab.services["registry-a"]["ports"]["debug"]
    assert debug["addr"] == f"127.0.0.1:{port}"
    https = lab.services["registry-a"]["ports"]["https"]
    context = ssl.create_default_context(cafile=lab.ca_file)
    for _ in range(3):  # traffic straight at this instance, so that its HTTP counters exist
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{https}/v2/team-a/app/manifests/1", context=context, timeout=10)
        except urllib.error.HTTPError as err:
            assert err.code == 401
    families = scrape(t, lab.ca_file, port)
    assert EXPECTED[REGISTRY_JOB] <= set(families), sorted(families)
    codes = {s.labels["code"] for s in families["registry_http_requests_total"]}
    assert "401" in codes, codes


def test_the_token_service_target_is_its_own_port_on_loopback(lab: LabState) -> None:
    t = target(TOKEN_JOB)
    assert t.address == f"127.0.0.1:{TOKEN_SERVICE_PORT}", "hosts: the unit binds the service on TOKEN_SERVICE_PORT"
    port = lab.services["token"]["ports"]["https"]
    before = scrape(t, lab.ca_file, port)
    assert EXPECTED[TOKEN_JOB] <= set(before), sorted(before)
    assert f"{token_metrics.DURATION}_count" in before
    # Through the lab's load balancer (nginx, a loopback peer that forwards): /metrics is not the token service's.
    status = _status(f"{lab.registry_url}/auth/../metrics", lab.ca_file)
    assert status in (401, 404), status
    request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics", headers={"X-Forwarded-For": "192.0.2.1"})
    assert _status(request, lab.ca_file) == 404, "a forwarded request never reads the metrics"


def _status(request: str | urllib.request.Request, ca_file: str) -> int:
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=ca_file), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_two_workers_counts_add_up_in_every_scrape(lab: LabState, tmp_path: Path) -> None:
    """gunicorn's workers each count; every scrape (whichever worker answers it) shows the sum. A broken
    multiprocess setup shows one worker's part, which differs between scrapes."""
    config = Path(lab.token["config_file"])
    robot = next(a for a in lab.accounts if a["kind"] == "robot")
    namespace = robot["robot"]["namespace"]
    port = supervisor.free_port()
    pki_dir = Path(lab.state_dir) / "pki"
    service = supervisor.Service(
        "auth-2",
        [
            sys.executable, "-m", "auth", "--config", str(config), "--bind", f"127.0.0.1:{port}",
            "--certfile", str(pki_dir / "server.crt"), "--keyfile", str(pki_dir / "server.key"), "--workers", "2",
        ],
        str(tmp_path / "auth-2.log"),
        {"https": port},
        env=supervisor.clean_env({"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}),
    )  # fmt: skip
    supervisor.start(service, cwd=tmp_path)
    try:
        supervisor.wait_ready(service, lambda: supervisor.port_open(port), timeout=60)
        url = f"https://127.0.0.1:{port}/auth?service={lab.token['service']}&scope=repository:{namespace}/app:pull"
        auth = base64.b64encode(f"{robot['name']}:{robot['password']}".encode()).decode()
        sent = 40

        def one(_: int) -> int:
            return _status(urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"}), lab.ca_file)

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(sent))) == {200}
        seen = []
        for _ in range(10):
            families = scrape(target(TOKEN_JOB), lab.ca_file, port)
            granted = [
                s.value
                for s in families[token_metrics.REQUESTS]
                if s.labels == {"grant": "basic", "outcome": "granted"}
            ]
            seen.append(granted[0])
        assert seen == [sent] * 10, seen
    finally:
        supervisor.stop(service)
    assert "Traceback" not in Path(service.log).read_text(), Path(service.log).read_text()[-2000:]


def test_agent_config_is_valid_json_with_the_scrape_config_path() -> None:
    config = agent_config("/registry-fleet/reg-dev/prometheus", "registry-fleet/reg-dev", scrape_targets(True))
    text = json.dumps(config)
    assert json.loads(text)["logs"]["metrics_collected"]["prometheus"]["prometheus_config_path"].startswith("/etc/")
