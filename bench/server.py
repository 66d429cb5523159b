"""A gunicorn server per set-up, and what /proc says about its workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pin(cpus: set[int] | None) -> None:
    """Pin the calling process to ``cpus`` (no-op when ``None`` or unsupported)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from ``/proc/<pid>/stat``, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After "pid (comm) ", field 3 (state) is fields[0]; utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_kib(pid: int) -> int:
    """``VmHWM`` (peak resident memory) of ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return sorted(found)


class GunicornServer:
    """``gunicorn 'bench.apps:create_app()'`` with sync workers on 127.0.0.1."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        *,
        workers: int = 1,
        cpus: set[int] | None = None,
        log_dir: Path,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.workers = workers
        self._log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        # The repository is importable (for ``bench.apps``); a PYTHONPATH given in ``env``
        # comes first, so that a modified copy of the package can be measured side by side.
        path = [p for p in (env.get("PYTHONPATH"), str(REPO)) if p]
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(path)}
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(workers),
            "--worker-class",
            "sync",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "warning",
            "--backlog",
            "2048",
            "--timeout",
            "60",
            "bench.apps:create_app()",
        ]
        self.process = subprocess.Popen(
            command,
            env=full_env,
            # Not the repository: gunicorn puts its working directory first on sys.path, which
            # would shadow a copy given in PYTHONPATH.
            cwd=log_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: pin(cpus)) if cpus else None,
        )
        self.worker_pids: list[int] = []

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the port accepts connections and every worker is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn for {self.name} exited; see its log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            pids = children(self.process.pid)
            if len(pids) >= self.workers:
                self.worker_pids = pids
                return
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn for {self.name} did not start within {timeout} s")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the workers."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids)

    def peak_rss_kib(self) -> int:
        """The largest ``VmHWM`` among the workers."""
        return max(peak_rss_kib(pid) for pid in self.worker_pids)

    def check_workers(self) -> None:
        """Fail if a worker was replaced (a crash or timeout would skew the figures)."""
        now = children(self.process.pid)
        if now != self.worker_pids:
            raise RuntimeError(
                f"gunicorn workers of {self.name} changed: {self.worker_pids} -> {now}"
            )

    def stop(self) -> None:
        """Stop gunicorn gracefully, then for good."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
