"""Load generators on 127.0.0.1: wrk when installed, else a small bundled Python one."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

from .apps import OK_BODY
from .payloads import Traffic, body, target, wrk_script
from .server import pin

#: A bound on requests per connection per run, whatever the duration.
MAX_REQUESTS_PER_CONNECTION = 200_000


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured on the client side."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(sorted_values: list[float], share: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(share * len(sorted_values)) - 1))
    return sorted_values[rank]


def have_wrk() -> bool:
    """Whether the ``wrk`` binary is on PATH."""
    return shutil.which("wrk") is not None


def run_wrk(
    url: str, traffic: Traffic, *, connections: int, seconds: float, cpus: set[int] | None
) -> LoadResult:
    """Load ``url`` with wrk (one thread; ``connections`` connections) for ``seconds``."""
    run_id = secrets.token_hex(4)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(traffic, run_id))
    try:
        command = [
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            script.name,
            url + target(traffic),
        ]
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
            preexec_fn=(lambda: pin(cpus)) if cpus else None,
        )
    finally:
        os.unlink(script.name)
    line = next(ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH "))
    data = json.loads(line[len("BENCH ") :])
    errors = sum(
        data[k]
        for k in ("status_errors", "connect_errors", "write_errors", "timeouts", "read_errors")
    )
    return LoadResult(
        requests=data["requests"],
        errors=errors,
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def _client(
    url: str,
    traffic: Traffic,
    prefix: str,
    start_at: float,
    seconds: float,
    cpus: set[int] | None,
    out: Connection,
) -> None:
    pin(cpus)
    parts = urlsplit(url)
    path = target(traffic)
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    latencies: list[float] = []
    errors = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.perf_counter() + seconds
    for n in range(MAX_REQUESTS_PER_CONNECTION):
        payload = body(traffic, prefix, n)
        began = time.perf_counter()
        if began >= deadline:
            break
        try:
            conn.request("POST", path, payload, headers)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200 or answer != OK_BODY:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
        latencies.append(time.perf_counter() - began)
    conn.close()
    out.send((latencies, errors))
    out.close()


def run_python(
    url: str, traffic: Traffic, *, connections: int, seconds: float, cpus: set[int] | None
) -> LoadResult:
    """Load ``url`` from ``connections`` processes with keep-alive ``http.client`` connections
    (gunicorn's sync worker closes each one after its answer; the client then reconnects)."""
    context = multiprocessing.get_context("fork")
    run_id = secrets.token_hex(4)
    start_at = time.time() + 0.2
    pipes = []
    processes = []
    for i in range(connections):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_client,
            args=(url, traffic, f"{run_id}_{i}", start_at, seconds, cpus, sender),
            daemon=True,
        )
        process.start()
        sender.close()
        pipes.append(receiver)
        processes.append(process)
    latencies: list[float] = []
    errors = 0
    for receiver in pipes:
        if not receiver.poll(seconds + 30):
            raise RuntimeError("a load generator process did not report back")
        got, failed = receiver.recv()
        latencies.extend(got)
        errors += failed
    for process in processes:
        process.join(timeout=10)
    latencies.sort()
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
    )


def run_load(
    generator: str,
    url: str,
    traffic: Traffic,
    *,
    connections: int,
    seconds: float,
    cpus: set[int] | None,
) -> LoadResult:
    """Run the named generator (``wrk`` or ``python``)."""
    runner = run_wrk if generator == "wrk" else run_python
    return runner(url, traffic, connections=connections, seconds=seconds, cpus=cpus)
