"""For the benchmarks (tests/bench_*.py): many concurrent HTTPS clients sending the same GET, timed."""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Callable, Mapping

Headers = Mapping[str, str] | Callable[[int, int], Mapping[str, str]]


def concurrent_gets(
    port: int,
    ca_file: str,
    path: str,
    headers: Headers,
    clients: int,
    per_client: int,
    connect_first: bool = False,
    warm_path: str | None = None,
    started: Callable[[], None] | None = None,
) -> tuple[list[float], float]:
    """(each request's latency in s, wall time) of `clients` threads each sending `per_client` GETs of `path`
    to 127.0.0.1:`port` on one keep-alive connection. `headers`: the same for every request, or a function of
    (client, request number). `connect_first`: every connection's TLS handshake is made before the clock starts
    (else the first request of each client pays it); `warm_path`: one untimed GET of it first (gunicorn's
    threads handle a new connection's handshake together with its first request). Any answer but 200 ends
    the run. `started`: called when the clock starts, once every client has connected (and warmed), e.g. to
    read the server's CPU time over the timed part only."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    ready = threading.Barrier(clients + 1)

    def worker(client: int) -> None:
        context = ssl.create_default_context(cafile=ca_file)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=120)
        if connect_first:
            conn.connect()
        if warm_path is not None:
            conn.request("GET", warm_path)
            conn.getresponse().read()
        ready.wait()
        mine = []
        for i in range(per_client):
            request_headers = headers(client, i) if callable(headers) else headers
            t = time.perf_counter()
            conn.request("GET", path, headers=dict(request_headers))
            resp = conn.getresponse()
            body = resp.read()
            mine.append(time.perf_counter() - t)
            if resp.status != 200:
                errors.append(f"{resp.status} {body[:120]!r}")
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    if started is not None:
        started()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} of {clients * per_client} GETs of {path} failed, e.g. {errors[0]}")
    return latencies, wall
