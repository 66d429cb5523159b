"""A PostgreSQL cluster of a test's own, on a free port of 127.0.0.1, that it may stop and start.

Never the machine's shared server: the cluster is made with ``initdb`` in a fresh temporary
directory and removed afterwards. ``initdb`` and ``postgres`` refuse to run as root, so when the
tests run as root the cluster belongs to the ``postgres`` user (``runuser -u postgres``), as
the Debian packages set it up.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PrivatePostgres", "postgres_binaries"]

START_SECONDS = 30
STOP_SECONDS = 30


def postgres_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (PATH first, then the newest
    ``/usr/lib/postgresql/<version>/bin``), or ``None``."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PrivatePostgres:
    """``initdb`` once, then :meth:`start` and :meth:`stop` as often as a test likes."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="oa-recall-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._owner: str | None = None
        if os.geteuid() == 0:
            self._owner = "postgres"
            entry = pwd.getpwnam(self._owner)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = START_SECONDS) -> None:
        command = [str(self.binaries / tool), *args]
        if self._owner:
            command = ["runuser", "-u", self._owner, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        """Start the server on its port and wait (``pg_ctl -w``) until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
            " -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(START_SECONDS),
            "start",
        )
        self.running = True

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected at once)."""
        if self.running:
            self.running = False
            self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(STOP_SECONDS),
                "stop",
                timeout=STOP_SECONDS + 10,
            )

    def remove(self) -> None:
        """Stop the server if running and delete the cluster."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
