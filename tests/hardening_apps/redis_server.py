"""A private ``redis-server`` on a free port, for outages: stopped and started by the test.

The machine's shared Redis (6379) is never touched. By default the private server keeps its data
in an append-only file in the test's own folder (``appendfsync always``, no RDB snapshots), so a
restart brings back what it held, as a production Redis with persistence would; with
``persistent=False`` it keeps nothing on disk, and a restart forgets everything.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = ["PrivateRedis", "private_redis"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class PrivateRedis:
    """One redis-server process of this test's own; :meth:`stop` and :meth:`start` at will."""

    def __init__(
        self, folder: Path, *, persistent: bool = True, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.folder = folder
        self.persistent = persistent
        self.extra_args = extra_args
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server on its port and wait until it answers PING."""
        assert self.process is None, "already running"
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        log = (self.folder / "redis.log").open("ab")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        args += ["--save", "", "--appendonly", "yes" if self.persistent else "no"]
        args += ["--appendfsync", "always", *self.extra_args]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"private redis-server did not start on {self.port}:\n"
                    + (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: it finishes its append-only file) and wait for it."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)
        self.process = None


@contextmanager
def private_redis(
    folder: Path, *, persistent: bool = True, extra_args: tuple[str, ...] = ()
) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis`; stopped on the way out, whatever happened."""
    folder.mkdir(parents=True, exist_ok=True)
    server = PrivateRedis(folder, persistent=persistent, extra_args=extra_args)
    server.start()
    try:
        yield server
    finally:
        with suppress(Exception):
            server.stop()
