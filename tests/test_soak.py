"""A bounded soak: thousands of callbacks from concurrent keep-alive clients against gunicorn.

3000 requests, shuffled with a fixed seed and spread over 8 client threads that each keep one
connection open: 1500 recalls of a new MsgKey, 200 recalls of a new and an already-sent MsgKey,
1000 exact redeliveries (a third of all requests), and 300 invalid requests (a wrong Sign, a
foreign SdkAppid, a body that is not JSON). Then the receivers' own record is compared with
what was sent: every valid MsgKey reached ``mirror`` exactly once, no MsgKey of an invalid
request reached it, every invalid request got its documented code, nothing answered 5xx, and
every accepted request was kept. The counts are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from flask_oa_recall import RECALL_COMMAND
from flask_oa_recall.store import SQLiteStore
from flask_oa_recall.testing import recall_body, sign
from tests.apps.host import SDK_APP_ID, TOKEN
from tests.hardening_apps.record import count
from tests.servers import CallbackClient, gunicorn_server, redis_prefixed

pytestmark = pytest.mark.e2e

APP = "tests.apps.host:create_app()"
PATH = "/tencent-im/callback"
FOREIGN_APP_ID = 1400000001
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
CLIENTS = 8
SEED = 20240601

#: kind -> (expected status, expected ErrorCode)
EXPECTED = {
    "new": (200, 0),
    "new+known": (200, 0),
    "redelivery": (200, 0),
    "bad-sign": (401, 40102),
    "foreign-sdkappid": (403, 40302),
    "bad-json": (400, 40001),
}


@dataclass(frozen=True)
class Item:
    """One request of the plan."""

    kind: str
    keys: tuple[str, ...]


def plan(run: str) -> list[Item]:
    """The 3000 requests, shuffled with a fixed seed."""
    rng = random.Random(SEED)
    singles = [f"soak-{run}-{i}" for i in range(1500)]
    items = [Item("new", (k,)) for k in singles]
    pairs = [(f"soak-{run}-pair-{i}", rng.choice(singles)) for i in range(200)]
    items += [Item("new+known", pair) for pair in pairs]
    sent = singles + [new for new, _ in pairs]
    items += [Item("redelivery", (rng.choice(sent),)) for _ in range(1000)]
    for kind in ("bad-sign", "foreign-sdkappid", "bad-json"):
        items += [Item(kind, (f"soak-{run}-{kind}-{i}",)) for i in range(100)]
    rng.shuffle(items)
    return items


def target(item: Item) -> str:
    when = str(int(time.time()))
    sdk_app_id = FOREIGN_APP_ID if item.kind == "foreign-sdkappid" else SDK_APP_ID
    signature = "0" * 64 if item.kind == "bad-sign" else sign(TOKEN, when)
    query = urlencode(
        {
            "SdkAppid": sdk_app_id,
            "CallbackCommand": RECALL_COMMAND,
            "contenttype": "json",
            "ClientIP": "127.0.0.1",
            "OptPlatform": "RESTAPI",
            "Sign": signature,
            "RequestTime": when,
        }
    )
    return f"{PATH}?{query}"


def payload(item: Item) -> bytes:
    if item.kind == "bad-json":
        return b'{"CallbackCommand": "' + RECALL_COMMAND.encode() + b'", "WithdrawMsgList": ['
    return json.dumps(recall_body(item.keys, official_account="@TOA#_soak")).encode()


@dataclass
class Results:
    answers: list[tuple[Item, int, dict[str, Any]]]
    errors: list[tuple[Item, str]]
    resent: int
    closed: int
    seconds: float


def soak(port: int, items: Sequence[Item]) -> Results:
    """Send ``items`` from :data:`CLIENTS` threads, each on its own keep-alive connection."""
    answers: list[tuple[Item, int, dict[str, Any]]] = []
    errors: list[tuple[Item, str]] = []
    resent = closed = 0
    lock = threading.Lock()

    def client(chunk: Sequence[Item]) -> None:
        nonlocal resent, closed
        http = CallbackClient(f"http://127.0.0.1:{port}", sdk_app_id=SDK_APP_ID, token=TOKEN)
        with http:
            for item in chunk:
                try:
                    response = http.send(payload(item), target(item))
                    status, raw = response.status, response.read()
                    if response.will_close:
                        http.close()
                        with lock:
                            closed += 1
                    envelope = json.loads(raw)
                except Exception as err:
                    with lock:
                        errors.append((item, f"{type(err).__name__}: {err}"))
                    http.close()
                    continue
                with lock:
                    answers.append((item, status, envelope))
        with lock:
            resent += http.resent

    threads = [threading.Thread(target=client, args=(items[i::CLIENTS],)) for i in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return Results(answers, errors, resent, closed, time.monotonic() - started)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("OA_RECALL_", "OA_TEST_")):
            monkeypatch.delenv(name)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """The default SQLite store, or a prefix of its own in the suite's Redis database."""
    if request.param == "sqlite":
        yield None
        return
    # A name outside the suite's "*oa-recall-test*" cleanup pattern: a test run in another
    # process (its fixture teardown) must not delete this run's keys while it is running.
    with redis_prefixed(request.getfixturevalue("redis_url"), "oa-hardening-soak") as url:
        yield url


def test_soak_every_valid_msgkey_once_every_invalid_request_rejected(
    tmp_path: Path, clean_env: None, store_url: str | None
) -> None:
    run = uuid.uuid4().hex[:8]
    items = plan(run)
    record = tmp_path / "record.txt"
    env = {"OA_TEST_RECORD": str(record), "OA_TEST_INSTANCE": str(tmp_path / "instance")}
    if store_url:
        env["OA_RECALL_STORE"] = store_url
    with gunicorn_server(
        APP, tmp_path, env=env, workers=3, worker_class="gthread", threads=4, name="soak"
    ) as server:
        results = soak(server.port, items)
        log = server.log()

    assert results.errors == []
    assert len(results.answers) == len(items)
    statuses = Counter(status for _, status, _ in results.answers)
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    wrong = [
        (item.kind, status, envelope)
        for item, status, envelope in results.answers
        if (status, envelope.get("ErrorCode")) != EXPECTED[item.kind]
        or set(envelope) != {"ActionStatus", "ErrorCode", "ErrorInfo"}
        or (status == 200) != (envelope == OK)
    ]
    assert wrong == []
    assert server_errors == 0
    assert "Traceback" not in log

    valid = {k for item in items if EXPECTED[item.kind][0] == 200 for k in item.keys}
    invalid = {k for item in items if EXPECTED[item.kind][0] != 200 for k in item.keys}
    mirrored = count(record, "done", "mirror")
    assert {k: mirrored[k] for k in valid} == dict.fromkeys(valid, 1)
    assert {k for k in invalid if mirrored[k]} == set()
    assert set(mirrored) == valid

    accepted = sum(1 for _, status, _ in results.answers if status == 200)
    audited = count(record, "done", "audit")
    assert len(audited) == accepted  # callback_received ran once per accepted request
    if store_url is None:
        store = SQLiteStore(str(tmp_path / "instance" / "oa_recall.sqlite3"))
        kept = store.deliveries(limit=10 * len(items))
        store.close()
        assert len(kept) == accepted  # every accepted request was kept
        assert Counter(d.status for d in kept).keys() <= {"done", "duplicate"}

    kinds = Counter(item.kind for item in items)
    duplicates = kinds["redelivery"] + kinds["new+known"]
    backend = "redis" if store_url else "sqlite"
    print(
        f"\n[soak {backend}] sent={len(items)} in {results.seconds:.1f} s"
        f" from {CLIENTS} keep-alive clients; valid MsgKeys={len(valid)};"
        f" duplicates={duplicates} (redeliveries={kinds['redelivery']},"
        f" new+known={kinds['new+known']}); invalid={len(invalid)}"
        f" (bad-sign={kinds['bad-sign']}, foreign-sdkappid={kinds['foreign-sdkappid']},"
        f" bad-json={kinds['bad-json']}); statuses={dict(sorted(statuses.items()))};"
        f" 5xx={server_errors}; connections closed by the server={results.closed};"
        f" client resends={results.resent};"
        f" receiver calls={sum(mirrored.values())}"
    )
