"""Small programs the network-namespace test runs *inside* its namespaces.

``python -m tests.netns_tools <command> ...``:

- ``wait URL SECONDS``: poll ``URL`` with GET until the server answers (any status), or for a
  ``tcp://host:port`` URL until it accepts a connection; exit 1 if not within ``SECONDS``.
- ``load SPEC OUT``: the stand-in for Tencent. Reads a JSON spec (targets, one job list per
  target, threads per target, pause between requests, a deadline as a Unix time), posts a signed
  recall per job from its own threads per target, stops at the deadline or when the jobs run
  out, and writes one JSON object per request to ``OUT``: host, keys, start and end (Unix
  time), HTTP status and envelope, or the error's name.
- ``relay LISTEN TARGET DELAY_FILE``: a delay line in front of a server: every byte a client
  sends is held for the number of seconds in ``DELAY_FILE`` (re-read every 50 ms; missing or
  empty means 0) before it goes on; answers come back at once. Runs until killed.

Bounded everywhere: every socket has a timeout and the load stops at its deadline.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask_oa_recall.testing import recall_body, signed_query

PATH = "/tencent-im/callback"


def wait(url: str, seconds: float) -> int:
    parts = urlsplit(url)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if parts.scheme == "tcp":
            try:
                socket.create_connection((parts.hostname or "", parts.port or 0), timeout=1).close()
                return 0
            except OSError:
                time.sleep(0.1)
                continue
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=1)
        try:
            conn.request("GET", parts.path or "/")
            conn.getresponse().read()
            return 0
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    print(f"{url} did not answer within {seconds} s", file=sys.stderr)
    return 1


def _post(target: str, keys: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    host, port = target.rsplit(":", 1)
    body = json.dumps(recall_body(keys, official_account=spec["official_account"])).encode()
    url = f"{PATH}?{signed_query(sdk_app_id=spec['sdk_app_id'], token=spec['token'])}"
    conn = http.client.HTTPConnection(host, int(port), timeout=spec["timeout"])
    answer: dict[str, Any] = {"keys": keys, "start": time.time()}
    try:
        conn.request("POST", url, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer["status"] = response.status
        answer["envelope"] = json.loads(response.read())
    except (OSError, http.client.HTTPException, ValueError) as err:
        answer["error"] = type(err).__name__
    finally:
        conn.close()
        answer["end"] = time.time()
    return answer


def load(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def worker(host: str, jobs: queue.SimpleQueue[list[str]]) -> None:
        while time.time() < spec["deadline"]:
            try:
                keys = jobs.get_nowait()
            except queue.Empty:
                return
            answer = _post(spec["targets"][host], keys, spec)
            answer["host"] = host
            with lock:
                results.append(answer)
            time.sleep(spec["pace"])

    threads = []
    for host, job_list in spec["jobs"].items():
        jobs: queue.SimpleQueue[list[str]] = queue.SimpleQueue()
        for keys in job_list:
            jobs.put(keys)
        for _ in range(spec["threads"]):
            threads.append(threading.Thread(target=worker, args=(host, jobs), daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, spec["deadline"] - time.time()) + spec["timeout"] + 5)
    with lock:
        Path(out_path).write_text(json.dumps(sorted(results, key=lambda r: r["start"])))
    return 0


class _Delay:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = 0.0
        self.read_at = 0.0

    def seconds(self) -> float:
        now = time.monotonic()
        if now - self.read_at > 0.05:
            self.read_at = now
            try:
                self.value = float(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                self.value = 0.0
        return self.value


def _pump(src: socket.socket, dst: socket.socket, delay: _Delay | None) -> None:
    line: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def send() -> None:
        while True:
            due, data = line.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    while True:
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        line.put((time.monotonic() + (delay.seconds() if delay else 0.0), data))
        if not data:
            break
    sender.join()
    for sock in (src, dst):
        sock.close()


def relay(listen: str, target: str, delay_file: str) -> int:
    host, port = listen.rsplit(":", 1)
    to_host, to_port = target.rsplit(":", 1)
    delay = _Delay(Path(delay_file))
    server = socket.create_server((host, int(port)))
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((to_host, int(to_port)), timeout=5)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        threading.Thread(target=_pump, args=(client, upstream, delay), daemon=True).start()
        threading.Thread(target=_pump, args=(upstream, client, None), daemon=True).start()


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "wait":
        return wait(args[0], float(args[1]))
    if command == "load":
        return load(args[0], args[1])
    if command == "relay":
        return relay(args[0], args[1], args[2])
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
