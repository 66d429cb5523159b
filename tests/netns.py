"""Hosts that really are apart: Linux network namespaces joined by veth pairs (iproute2).

:class:`VirtualNetwork` builds, for one test, a client host, two app hosts and a store host,
each a network namespace of its own with no route out of 10.213.0.0/24::

    client 10.213.0.1 ──┐ front bridge (in the client's namespace)
    app a  10.213.0.11 ─┤
    app b  10.213.0.12 ─┘
    app a  10.213.0.131 ─┐ back bridge (in the store's namespace)
    app b  10.213.0.132 ─┤
    store  10.213.0.129 ─┘

Nothing is added to the machine's own namespace: every veth is created with its ends inside
the test's namespaces, so there is no route from them to the machine's networks or back. The
names carry a random tag, so two runs never share one. :meth:`VirtualNetwork.destroy` ends
every process started in the namespaces and deletes them, whatever happened before.

Faults are real kernel-level network faults:

- :meth:`VirtualNetwork.cut` takes an app host's port off the store's bridge: the host's link
  stays up and its packets to the store vanish without an answer, as with a switch port moved
  to another VLAN (a silent partition: connects and reads time out, nothing is refused);
- latency comes from ``tc netem delay`` when the kernel has it; kernels built without
  ``sch_netem`` (this project's CI machine is one) get it from a delay line on the store host
  (``tests.netns_tools relay``) that holds every byte from the slowed host for the set time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CLIENT_IP",
    "STORE_IP",
    "NetnsUnavailable",
    "VirtualNetwork",
    "netns_unavailable",
]

CLIENT_IP = "10.213.0.1"
STORE_IP = "10.213.0.129"
FRONT_IPS = {"a": "10.213.0.11", "b": "10.213.0.12", "c": "10.213.0.13"}
BACK_IPS = {"a": "10.213.0.131", "b": "10.213.0.132", "c": "10.213.0.133"}
PREFIX_LENGTH = 25
COMMAND_SECONDS = 10.0
STOP_SECONDS = 10.0


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, no kernel support)."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=COMMAND_SECONDS, check=False
    )


def _must(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        raise NetnsUnavailable(f"{' '.join(map(str, result.args))}: {result.stderr.strip()}")
    return result.stdout


def netns_unavailable() -> str | None:
    """``None`` if this process can make namespaces, bridges and veth pairs; else why not."""
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"oa11p-{uuid.uuid4().hex[:6]}"
    try:
        _must(_ip("netns", "add", probe))
        _must(_ip("-n", probe, "link", "add", "br0", "type", "bridge"))
        _must(_ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"))
    except (NetnsUnavailable, OSError, subprocess.TimeoutExpired) as err:
        return f"cannot build a virtual network here: {err}"
    finally:
        _ip("netns", "del", probe)
    return None


def netem_available(namespace: str, device: str) -> bool:
    """Whether ``tc qdisc ... netem`` works (the kernel may be built without ``sch_netem``)."""
    if shutil.which("tc") is None:
        return False
    added = subprocess.run(
        ["tc", "-n", namespace, "qdisc", "add", "dev", device, "root", "netem", "delay", "1ms"],
        capture_output=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )
    if added.returncode != 0:
        return False
    subprocess.run(
        ["tc", "-n", namespace, "qdisc", "del", "dev", device, "root"],
        capture_output=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )
    return True


@dataclass
class VirtualNetwork:
    """The namespaces of one test, the processes started in them, and the faults applied."""

    apps: tuple[str, ...] = ("a", "b")
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cut_hosts: set[str] = field(default_factory=set)

    def ns(self, host: str) -> str:
        """The namespace of ``host`` (``client``, ``store`` or an app host's letter)."""
        return f"oa11-{self.tag}-{host}"

    @property
    def hosts(self) -> list[str]:
        return ["client", "store", *self.apps]

    def front_ip(self, app: str) -> str:
        return FRONT_IPS[app]

    def back_ip(self, app: str) -> str:
        return BACK_IPS[app]

    def _port_name(self, app: str) -> str:
        return f"p-{app}"  # the store-side end of ``app``'s back link, on the store's bridge

    def create(self) -> None:
        """Build the namespaces, bridges and links; raise :class:`NetnsUnavailable` if refused."""
        for host in self.hosts:
            _must(_ip("netns", "add", self.ns(host)))
            _must(_ip("-n", self.ns(host), "link", "set", "lo", "up"))
        for host, address in (("client", CLIENT_IP), ("store", STORE_IP)):
            ns = self.ns(host)
            _must(_ip("-n", ns, "link", "add", "br0", "type", "bridge"))
            _must(_ip("-n", ns, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", "br0"))
            _must(_ip("-n", ns, "link", "set", "br0", "up"))
        for app in self.apps:
            ns = self.ns(app)
            for device, peer_host, peer, address in (
                ("front", "client", f"f-{app}", FRONT_IPS[app]),
                ("back", "store", self._port_name(app), BACK_IPS[app]),
            ):
                peer_ns = self.ns(peer_host)
                _must(
                    _ip(
                        "-n",
                        ns,
                        "link",
                        "add",
                        device,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        peer,
                        "netns",
                        peer_ns,
                    )
                )
                _must(_ip("-n", peer_ns, "link", "set", peer, "master", "br0"))
                _must(_ip("-n", peer_ns, "link", "set", peer, "up"))
                _must(_ip("-n", ns, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", device))
                _must(_ip("-n", ns, "link", "set", device, "up"))

    def routes(self, host: str) -> str:
        """``ip route`` inside ``host``: only the connected /25s, no default route."""
        return _must(_ip("-n", self.ns(host), "route"))

    def cut(self, app: str) -> None:
        """Take ``app``'s port off the store's bridge: its packets to the store vanish."""
        _must(_ip("-n", self.ns("store"), "link", "set", self._port_name(app), "nomaster"))
        self.cut_hosts.add(app)

    def heal(self, app: str) -> None:
        """Put ``app``'s port back on the store's bridge."""
        _must(_ip("-n", self.ns("store"), "link", "set", self._port_name(app), "master", "br0"))
        self.cut_hosts.discard(app)

    def command(self, host: str, args: Sequence[str]) -> list[str]:
        """``args`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.ns(host), *args]

    def start(
        self, host: str, args: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in ``host``'s namespace, output to ``log``; ended by :meth:`destroy`."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                self.command(host, args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(
        self,
        host: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in ``host``'s namespace to the end; return what it printed."""
        return subprocess.run(
            self.command(host, args),
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM ``process``'s group, then SIGKILL after :data:`STOP_SECONDS`."""
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_SECONDS)

    def destroy(self) -> list[str]:
        """End every process this network started, then delete its namespaces.

        Returns what could not be cleaned up (empty when all went), for the test to report.
        """
        problems: list[str] = []
        for process in reversed(self.processes):
            try:
                self.stop(process)
            except Exception as err:  # keep tearing down whatever failed
                problems.append(f"process {process.pid}: {err}")
        for host in self.hosts:
            ns = self.ns(host)
            # Anything still inside (a worker that outlived its master) was started by us.
            for pid in _ip("netns", "pids", ns).stdout.split():
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + STOP_SECONDS
            while _ip("netns", "pids", ns).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.05)
            result = _ip("netns", "del", ns)
            if result.returncode != 0 and ns in _ip("netns", "list").stdout:
                problems.append(f"{ns}: {result.stderr.strip()}")
        return problems


def python_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
