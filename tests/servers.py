"""Real servers for end-to-end tests: gunicorn on 127.0.0.1, and a small HTTP client.

::

    from servers import CallbackClient, gunicorn_server

    with gunicorn_server("tests.apps.host:create_app()", tmp_path, env=env, workers=3) as server:
        client = CallbackClient(server.base_url, sdk_app_id=..., token=...)
        status, envelope = client.recall(["71_1_1698741698"])

Everything is bounded: the start, the wait for the port, the stop (SIGTERM, then SIGKILL).
Nothing here reads more of ``/proc`` than the master's own children.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask_oa_recall import RECALL_COMMAND
from flask_oa_recall.testing import recall_body, signed_query

__all__ = [
    "PROJECT_ROOT",
    "CallbackClient",
    "GunicornServer",
    "ServerError",
    "child_pids",
    "example_server",
    "gunicorn_server",
    "postgres_schema",
    "redis_prefixed",
    "run_flask",
    "subprocess_env",
    "wait_for",
]

#: The project's root: on ``PYTHONPATH`` of every subprocess, so ``tests.apps.*`` imports.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _gunicorn_flags() -> list[str]:
    """Options this gunicorn has that keep servers from sharing anything outside the test."""
    from gunicorn.config import KNOWN_SETTINGS

    known = {flag for setting in KNOWN_SETTINGS for flag in setting.cli or ()}
    # gunicorn 25+ opens a control socket at one fixed path per user: two servers would clash.
    return ["--no-control-socket"] if "--no-control-socket" in known else []


_LISTENING = re.compile(r"Listening at: http://([\d.]+):(\d+)")


class ServerError(RuntimeError):
    """The server did not start or stop as expected; the message ends with its log's tail."""


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, the project's root on ``PYTHONPATH``, plus ``extra``."""
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra or {})
    return env


def child_pids(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from ``/proc`` (no psutil)."""
    children: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    found_file = False
    with suppress(OSError):
        for task in task_dir.iterdir():
            path = task / "children"
            if path.exists():
                found_file = True
                children.extend(int(c) for c in path.read_text().split())
    if found_file:
        return sorted(set(children))
    # Kernels without CONFIG_PROC_CHILDREN: read every process's parent from its stat line.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid ...; comm may hold spaces or parentheses.
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return sorted(children)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


@dataclass
class GunicornServer:
    """A running gunicorn master, as :func:`gunicorn_server` yields it."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    workers: int
    env: dict[str, str] = field(repr=False)

    @property
    def pid(self) -> int:
        """The master's pid."""
        return self.process.pid

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    def worker_pids(self) -> list[int]:
        """The live workers' pids (children of the master)."""
        return [p for p in child_pids(self.pid) if _alive(p)]

    def log(self) -> str:
        """Everything the server logged so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_workers(self, count: int | None = None, timeout: float = 15.0) -> list[int]:
        """Wait until ``count`` (default: all) workers are alive; return their pids."""
        want = self.workers if count is None else count
        return list(
            wait_for(
                lambda: pids if len(pids := self.worker_pids()) >= want else None,
                timeout=timeout,
                what=f"{want} gunicorn workers",
            )
        )


def _read_port(log_path: Path, process: subprocess.Popen[bytes]) -> tuple[str, int] | None:
    if process.poll() is not None:
        raise ServerError(
            f"gunicorn exited with {process.returncode} while starting:\n"
            + log_path.read_text(errors="replace")[-4000:]
        )
    match = _LISTENING.search(log_path.read_text(errors="replace"))
    return (match.group(1), int(match.group(2))) if match else None


def _answers(host: str, port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
    except OSError:
        return False
    finally:
        conn.close()
    return True


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    workers = child_pids(process.pid)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
    # A worker that outlived its master (it was stuck) is ours to end too.
    for pid in workers:
        if _alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def gunicorn_server(
    app: str,
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    workers: int = 2,
    worker_class: str = "sync",
    threads: int = 1,
    timeout: float = 30,
    graceful_timeout: float = 3,
    preload: bool = False,
    probe_path: str = "/tencent-im/callback",
    start_timeout: float = 20.0,
    stop_timeout: float = 10.0,
    extra_args: Sequence[str] = (),
    name: str = "gunicorn",
) -> Iterator[GunicornServer]:
    """Run ``sys.executable -m gunicorn`` serving ``app`` ("module:factory()") on 127.0.0.1.

    The port is chosen by the kernel (``bind 127.0.0.1:0``) and read back from the log, so two
    servers never race for one. The log (error and access) goes to ``log_dir/<name>.log``.
    Yields once the server answers HTTP on ``probe_path`` and every worker is up; on the way
    out sends SIGTERM, then SIGKILL after ``stop_timeout`` seconds.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--threads",
        str(threads),
        "--timeout",
        str(timeout),
        "--graceful-timeout",
        str(graceful_timeout),
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
        "--log-level",
        "info",
        "--chdir",
        str(PROJECT_ROOT),
        *(["--preload"] if preload else []),
        *_gunicorn_flags(),
        *extra_args,
        app,
    ]
    full_env = subprocess_env(env)
    with _running(
        args, full_env, log_path, workers, probe_path, start_timeout, stop_timeout
    ) as server:
        yield server


@contextmanager
def example_server(
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    workers: int = 2,
    start_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[GunicornServer]:
    """Run the example as its README says, ``gunicorn -c examples/gunicorn.conf.py``, on a port
    the kernel picks; its output (stdout and stderr) goes to ``log_dir/example.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "gunicorn", "-c", "examples/gunicorn.conf.py"]
    full_env = subprocess_env(
        {"BIND": "127.0.0.1:0", "WEB_CONCURRENCY": str(workers), **(env or {})}
    )
    log_path = log_dir / "example.log"
    with _running(
        args, full_env, log_path, workers, "/messages", start_timeout, stop_timeout
    ) as server:
        yield server


@contextmanager
def _running(
    args: list[str],
    env: dict[str, str],
    log_path: Path,
    workers: int,
    probe_path: str,
    start_timeout: float,
    stop_timeout: float,
) -> Iterator[GunicornServer]:
    """Start gunicorn with ``args``; yield once it answers and every worker is up; stop it."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=PROJECT_ROOT,
        )
    try:
        try:
            host, port = wait_for(
                lambda: _read_port(log_path, process),
                timeout=start_timeout,
                what="gunicorn to listen",
            )
            server = GunicornServer(process, host, port, log_path, workers, env)
            wait_for(
                lambda: _answers(host, port, probe_path),
                timeout=start_timeout,
                what="gunicorn to answer",
            )
            server.wait_for_workers(timeout=start_timeout)
        except TimeoutError as err:
            raise ServerError(f"{err}\n{log_path.read_text(errors='replace')[-4000:]}") from None
        yield server
    finally:
        _stop(process, stop_timeout)


def run_flask(
    app: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``flask --app <app> <args>`` as a real subprocess; return what it printed."""
    flask = [sys.executable, "-m", "flask", "--app", app, *args]
    return subprocess.run(
        flask,
        env=subprocess_env(env),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class CallbackClient:
    """Posts signed callbacks over one keep-alive HTTP connection, standard library only.

    A connection the server closed (gunicorn's sync workers close after every response) is
    reopened for the next request. A request that fails on a *reused* connection before any
    response byte arrived is sent once more, as browsers and urllib3 do; :attr:`resent` counts
    those, so a test that counts deliveries can tell.
    """

    def __init__(
        self,
        base_url: str,
        *,
        sdk_app_id: int,
        token: str | None,
        path: str = "/tencent-im/callback",
        timeout: float = 15.0,
    ) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = path
        self.sdk_app_id = sdk_app_id
        self.token = token
        self.timeout = timeout
        self.resent = 0
        self._conn: http.client.HTTPConnection | None = None
        self._used = False

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._used = False
        return self._conn

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> CallbackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, command: str = RECALL_COMMAND, **query: Any) -> str:
        """The path and signed query for ``command``."""
        qs = signed_query(
            command=command, sdk_app_id=self.sdk_app_id, token=self.token or "", **query
        )
        return f"{self.path}?{qs}"

    def send(self, body: bytes, url: str) -> http.client.HTTPResponse:
        """Send a POST and return the response before reading it (its body is unread)."""
        for attempt in (1, 2):
            conn = self._connection()
            reused = self._used
            try:
                conn.request("POST", url, body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if not reused or attempt == 2:
                    raise
                self.resent += 1
                continue
            self._used = True
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def start(
        self, msg_keys: Sequence[str], *, official_account: str = "@TOA#_e2e"
    ) -> http.client.HTTPConnection:
        """Send a signed recall on a connection of its own and return without waiting.

        Call ``getresponse()`` on the returned connection later (and close it); for tests that
        act on the server while it handles the request.
        """
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        body = json.dumps(recall_body(msg_keys, official_account=official_account)).encode()
        conn.request("POST", self.url(), body=body, headers={"Content-Type": "application/json"})
        return conn

    def post(
        self, body: Mapping[str, Any] | bytes, *, command: str | None = None, **query: Any
    ) -> tuple[int, dict[str, Any]]:
        """POST a signed callback; return the HTTP status and the decoded envelope."""
        if command is None:
            command = (
                str(body.get("CallbackCommand", RECALL_COMMAND))
                if isinstance(body, Mapping)
                else RECALL_COMMAND
            )
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = self.send(data, self.url(command, **query))
        payload = response.read()
        if response.will_close:
            self.close()
        return response.status, json.loads(payload)

    def recall(
        self, msg_keys: Sequence[str], *, official_account: str = "@TOA#_e2e", **query: Any
    ) -> tuple[int, dict[str, Any]]:
        """POST a signed recall of ``msg_keys``."""
        return self.post(recall_body(msg_keys, official_account=official_account), **query)


@contextmanager
def redis_prefixed(redis_url: str, name: str = "oa-recall-test") -> Iterator[str]:
    """``redis_url`` with a ``?prefix=`` of its own; every key holding it is deleted after.

    The Redis store wraps the prefix in braces (``{prefix}:...``), so the keys are matched by
    ``*prefix*``, not by a leading pattern.
    """
    import redis

    prefix = f"{name}-{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in redis_url else "?"
    try:
        yield f"{redis_url}{sep}prefix={prefix}"
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            for key in client.scan_iter(f"*{prefix}*"):
                client.delete(key)
        finally:
            client.close()


@contextmanager
def postgres_schema(postgres_url: str, name: str = "oa_recall_test") -> Iterator[str]:
    """``postgres_url`` with a ``?schema=`` of its own (created by the store when first
    used); the schema and everything in it is dropped after."""
    import psycopg

    schema = f"{name}_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{sep}schema={schema}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
