"""``flask oa-recall deliveries``, ``replay`` and ``prune``, through the app's CLI runner."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from flask_oa_recall import RecallEvent, callback_received, messages_recalled, store_failed
from flask_oa_recall.state import get_state
from flask_oa_recall.store import NewDelivery, Outcome, Store
from flask_oa_recall.testing import callback_body, post_callback, sign
from tests.servers import postgres_schema, redis_prefixed

DAY = 86_400.0
TOKEN = "xxxxyyyy"
MIRROR = f"messages_recalled:{__name__}.mirror"
INDEX = f"messages_recalled:{__name__}.index"
AUDIT = f"callback_received:{__name__}.host.<locals>.audit"

#: Runs a test against every backend, through the ``store_url`` fixture.
BACKENDS = pytest.mark.parametrize(
    "store_url",
    [
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
    indirect=True,
)


@dataclass
class Host:
    """An app with two recall receivers and one callback receiver that record their calls."""

    app: Flask
    calls: list[tuple[str, str]] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)

    @property
    def store(self) -> Store:
        state = get_state(self.app)
        return state.store(state.settings(self.app.config))

    def cli(self, *args: str) -> Result:
        return self.app.test_cli_runner().invoke(args=["oa-recall", *args])

    def recall(self, *keys: str) -> str:
        """Post a signed recall; return the id of the delivery it was kept as."""
        response = post_callback(self.app.test_client(), self.app, msg_keys=keys)
        assert response.status_code == 200
        return self.store.deliveries(limit=1)[0].id

    def count(self, receiver: str) -> int:
        return sum(1 for name, _ in self.calls if name == receiver)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """``memory://`` unless a test asks for ``sqlite``, ``redis`` or ``postgres`` (indirect
    parametrisation)."""
    kind = getattr(request, "param", "memory")
    if kind == "redis":
        with redis_prefixed(request.getfixturevalue("redis_url")) as url:
            yield url
    elif kind == "postgres":
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            yield url
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'deliveries.sqlite3'}"
    else:
        yield "memory://"


@pytest.fixture
def host(make_app: Callable[..., Flask], store_url: str) -> Iterator[Host]:
    app = make_app(store=store_url)
    host = Host(app)

    def receiver(name: str) -> Callable[..., None]:
        def run(sender: Flask, event: RecallEvent, **_: Any) -> None:
            if name in host.failing:
                raise RuntimeError(f"{name} is down")
            host.calls.extend((name, key) for key in event.msg_keys)

        run.__qualname__ = name
        return run

    def audit(sender: Flask, callback: Any, **_: Any) -> None:
        host.calls.append(("audit", callback.delivery_id))

    messages_recalled.connect(receiver("mirror"), app, weak=False)
    messages_recalled.connect(receiver("index"), app, weak=False)
    callback_received.connect(audit, app, weak=False)
    yield host
    get_state(app).close()  # before the store's schema or keys are removed


@contextmanager
def capture_store_failures(app: Flask) -> Iterator[list[Exception]]:
    """The exceptions ``store_failed`` reports inside the block."""
    errors: list[Exception] = []

    def record(sender: Flask, exception: Exception, **_: Any) -> None:
        errors.append(exception)

    with store_failed.connected_to(record, app):
        yield errors


def keep(
    store: Store,
    delivery_id: str,
    *,
    age_days: float = 0.0,
    keys: tuple[str, ...] = ("k1",),
    lease: float = 60.0,
    status: str | None = None,
) -> None:
    """Keep a delivery directly in the store (optionally finished with ``status``)."""
    delivery = NewDelivery(
        id=delivery_id,
        received_at=time.time() - age_days * DAY,
        sdk_app_id=1400000000,
        command="OfficialAccount.CallbackAfterMsgWithDraw",
        query={"SdkAppid": "1400000000"},
        body=json.dumps(
            {
                "CallbackCommand": "OfficialAccount.CallbackAfterMsgWithDraw",
                "Official_Account": "@TOA#_kept",
                "WithdrawMsgList": [{"MsgKey": k} for k in keys],
                "EventTime": 1670574414123,
            }
        ),
        official_account="@TOA#_kept",
        msg_keys=keys,
    )
    claim = store.begin(delivery, lease)
    if status is not None:
        store.finish(delivery_id, claim, Outcome(status=status, error=None))


def rows(output: str) -> list[dict[str, str]]:
    """Parse the aligned table back into dicts, by the header's column offsets."""
    header, *lines = output.splitlines()
    names = [
        "ID",
        "RECEIVED (UTC)",
        "COMMAND",
        "OFFICIAL ACCOUNT",
        "KEYS",
        "STATUS",
        "ATTEMPTS",
        "FAILED RECEIVERS",
        "LAST ERROR",
    ]
    starts = [header.index(n) for n in names]
    assert starts == sorted(starts)
    ends = [*starts[1:], None]
    return [
        {n: line[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)}
        for line in lines
    ]


def test_deliveries_on_an_empty_store_says_so(host: Host) -> None:
    result = host.cli("deliveries")
    assert result.exit_code == 0
    assert result.output == "No deliveries kept.\n"


def test_deliveries_table_shows_each_delivery_aligned_newest_first(host: Host) -> None:
    done = host.recall("k1", "k2")
    host.failing.add("index")
    failed = host.recall("k3")
    other = post_callback(
        host.app.test_client(), host.app, callback_body("C2C.CallbackAfterSendMsg")
    )
    assert other.status_code == 200

    result = host.cli("deliveries")

    assert result.exit_code == 0
    table = rows(result.output)
    assert [r["ID"] for r in table[1:]] == [failed, done]
    assert table[0]["COMMAND"] == "C2C.AfterSendMsg"
    assert table[0]["KEYS"] == "-"
    assert table[0]["STATUS"] == "done"
    assert table[1] | {"RECEIVED (UTC)": ""} == {
        "ID": failed,
        "RECEIVED (UTC)": "",
        "COMMAND": "recall",
        "OFFICIAL ACCOUNT": "@TOA#_test",
        "KEYS": "1",
        "STATUS": "failed",
        "ATTEMPTS": "1",
        "FAILED RECEIVERS": INDEX,
        "LAST ERROR": "RuntimeError: index is down",
    }
    assert table[2]["STATUS"] == "done"
    assert table[2]["KEYS"] == "2"
    assert table[2]["FAILED RECEIVERS"] == "-"
    assert time.strptime(table[2]["RECEIVED (UTC)"], "%Y-%m-%d %H:%M:%S")


@BACKENDS
def test_a_pending_delivery_whose_lease_ran_out_shows_as_interrupted(host: Host) -> None:
    keep(host.store, "live", keys=("a",), lease=60)
    keep(host.store, "dead", keys=("b",), lease=-1)

    table = {r["ID"]: r["STATUS"] for r in rows(host.cli("deliveries").output)}
    lines = [json.loads(line) for line in host.cli("deliveries", "--json").output.splitlines()]

    assert table == {"live": "pending", "dead": "interrupted"}
    assert {d["id"]: d["status"] for d in lines} == table


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--failed"], {"failed"}),
        (["--pending"], {"live", "dead"}),
        (["--failed", "--pending"], {"failed", "live", "dead"}),
        ([], {"failed", "live", "dead", "done"}),
    ],
    ids=["failed", "pending", "both", "all"],
)
@BACKENDS
def test_deliveries_filters_by_status(host: Host, flags: list[str], expected: set[str]) -> None:
    keep(host.store, "done", keys=("a",), status="done")
    keep(host.store, "failed", keys=("b",), status="failed")
    keep(host.store, "live", keys=("c",))
    keep(host.store, "dead", keys=("d",), lease=-1)

    result = host.cli("deliveries", *flags)

    assert result.exit_code == 0
    assert {r["ID"] for r in rows(result.output)} == expected


def test_deliveries_with_a_filter_that_matches_nothing_says_so(host: Host) -> None:
    host.recall("k1")
    result = host.cli("deliveries", "--failed")
    assert result.exit_code == 0
    assert result.output == "No such deliveries.\n"


def test_deliveries_limit_keeps_the_newest(host: Host) -> None:
    host.recall("k1")
    newest = host.recall("k2")
    result = host.cli("deliveries", "--limit", "1")
    assert [r["ID"] for r in rows(result.output)] == [newest]
    assert host.cli("deliveries", "--limit", "0").exit_code == 2


def test_deliveries_json_is_one_object_per_line_without_secrets(host: Host) -> None:
    host.failing.add("mirror")
    delivery_id = host.recall("k1", "k2")

    result = host.cli("deliveries", "--json")

    assert result.exit_code == 0
    (line,) = result.output.splitlines()
    kept = json.loads(line)
    assert kept | {"received_at": "", "lease_until": ""} == {
        "id": delivery_id,
        "received_at": "",
        "sdk_app_id": 1400000000,
        "command": "OfficialAccount.CallbackAfterMsgWithDraw",
        "official_account": "@TOA#_test",
        "msg_keys": ["k1", "k2"],
        "status": "failed",
        "attempts": 1,
        "receivers": {AUDIT: "ok", MIRROR: "failed", INDEX: "ok"},
        "failed_receivers": [MIRROR],
        "last_error": f"{MIRROR}: RuntimeError: mirror is down",
        "lease_until": "",
    }
    assert kept["received_at"].endswith("+00:00")
    assert kept["lease_until"] is None
    assert TOKEN not in result.output
    assert "sign" not in result.output.lower()
    assert sign(TOKEN, str(int(time.time()))) not in result.output


@BACKENDS
def test_replay_runs_only_the_receivers_that_failed(host: Host) -> None:
    host.failing.add("index")
    delivery_id = host.recall("k1", "k2")
    assert host.count("mirror") == 2
    assert host.count("audit") == 1
    assert host.count("index") == 0
    host.failing.clear()

    result = host.cli("replay", delivery_id)

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{delivery_id}  done       attempt 2; ran: {INDEX} ok",
        "Replayed 1: 1 finished, 0 not.",
    ]
    assert host.calls[-2:] == [("index", "k1"), ("index", "k2")]
    assert (host.count("mirror"), host.count("audit"), host.count("index")) == (2, 1, 2)
    kept = host.store.get(delivery_id)
    assert kept is not None
    assert (kept.status, kept.attempts, kept.last_error) == ("done", 2, None)


def test_replay_of_a_receiver_that_still_fails_exits_1(host: Host) -> None:
    host.failing.add("index")
    delivery_id = host.recall("k1")

    result = host.cli("replay", "--failed")

    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{delivery_id}  failed     attempt 2; ran: {INDEX} failed;"
        f" error: {INDEX}: RuntimeError: index is down",
        "Replayed 1: 0 finished, 1 not.",
    ]
    assert host.count("mirror") == 1


def test_replay_of_an_unknown_id_is_an_error_and_the_others_still_run(host: Host) -> None:
    host.failing.add("mirror")
    delivery_id = host.recall("k1")
    host.failing.clear()

    result = host.cli("replay", "nope", delivery_id)

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "nope  unknown    no such delivery"
    assert lines[1].startswith(f"{delivery_id}  done ")
    assert lines[2] == "Replayed 2: 1 finished, 1 not."
    assert host.count("mirror") == 1


@BACKENDS
def test_replay_skips_a_delivery_a_live_worker_holds_as_busy(host: Host) -> None:
    keep(host.store, "live", keys=("a",), lease=60)

    result = host.cli("replay", "live")

    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith(
        "live  busy       leased by a live worker until"
    )
    assert host.calls == []
    kept = host.store.get("live")
    assert kept is not None
    assert (kept.status, kept.attempts) == ("pending", 1)


def test_replay_pending_leaves_deliveries_in_flight_alone(host: Host) -> None:
    keep(host.store, "live", keys=("a",), lease=60)

    result = host.cli("replay", "--pending")

    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "Left alone 1 pending deliveries that live workers hold.",
        "Nothing to replay.",
    ]
    kept = host.store.get("live")
    assert kept is not None
    assert (kept.status, kept.attempts) == ("pending", 1)


def test_replay_of_a_finished_delivery_runs_nothing_and_changes_nothing(host: Host) -> None:
    delivery_id = host.recall("k1")

    result = host.cli("replay", delivery_id)

    assert result.exit_code == 0
    assert result.output.splitlines() == [
        f"{delivery_id}  done       already finished; nothing to replay",
        "Replayed 1: 1 finished, 0 not.",
    ]
    assert host.count("mirror") == 1
    kept = host.store.get(delivery_id)
    assert kept is not None
    assert (kept.status, kept.attempts) == ("done", 1)


@BACKENDS
def test_replay_pending_finishes_an_interrupted_delivery_with_every_receiver(host: Host) -> None:
    keep(host.store, "dead", keys=("a", "b"), lease=-1)

    result = host.cli("replay", "--pending")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        f"dead  done       attempt 2; ran: {AUDIT} ok, {INDEX} ok, {MIRROR} ok"
    )
    assert sorted(host.calls) == [
        ("audit", "dead"),
        ("index", "a"),
        ("index", "b"),
        ("mirror", "a"),
        ("mirror", "b"),
    ]


@BACKENDS
def test_replay_of_a_delivery_a_redelivery_completed_is_a_duplicate(host: Host) -> None:
    host.failing.add("index")
    first = host.recall("k1")
    host.failing.clear()
    host.recall("k1")  # Tencent's retry: index now succeeds for k1, mirror is not run again
    assert (host.count("mirror"), host.count("index")) == (1, 1)

    result = host.cli("replay", first)

    assert result.exit_code == 0
    assert result.output.splitlines()[0].startswith(f"{first}  duplicate  attempt 2; ran: ")
    assert "messages_recalled" not in result.output
    assert (host.count("mirror"), host.count("index")) == (1, 1)


def test_replay_needs_ids_or_a_filter(host: Host) -> None:
    result = host.cli("replay")
    assert result.exit_code == 2
    assert "name delivery IDs, or use --failed and/or --pending." in result.output


def test_replay_with_nothing_to_do_says_so(host: Host) -> None:
    host.recall("k1")
    result = host.cli("replay", "--failed", "--pending")
    assert result.exit_code == 0
    assert result.output == "Nothing to replay.\n"


@BACKENDS
def test_prune_drops_old_finished_deliveries_and_keeps_the_rest(host: Host) -> None:
    keep(host.store, "old-done", age_days=10, keys=("a",), status="done")
    keep(host.store, "old-dup", age_days=10, keys=("b",), status="duplicate")
    keep(host.store, "old-failed", age_days=10, keys=("c",), status="failed")
    keep(host.store, "old-pending", age_days=10, keys=("d",), lease=-1)
    keep(host.store, "new-done", age_days=1, keys=("e",), status="done")

    result = host.cli("prune", "--older-than", "7")

    assert result.exit_code == 0
    assert result.output.startswith("Dropped 2 done and duplicate deliveries received before ")
    remaining = {d.id for d in host.store.deliveries()}
    assert remaining == {"old-failed", "old-pending", "new-done"}

    result = host.cli("prune", "--older-than", "7", "--include-failed")

    assert result.exit_code == 0
    assert result.output.startswith("Dropped 1 done, duplicate and failed deliveries")
    assert {d.id for d in host.store.deliveries()} == {"old-pending", "new-done"}


def test_prune_needs_older_than(host: Host) -> None:
    result = host.cli("prune")
    assert result.exit_code == 2
    assert "Missing option '--older-than'" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deliveries"], "Error: cannot read the delivery store: cannot open SQLite store"),
        (["replay", "--failed"], "Error: cannot read the delivery store: cannot open SQLite store"),
        (["replay", "some-id"], "some-id  error      cannot replay it: cannot open SQLite store"),
        (["prune", "--older-than", "1"], "Error: cannot prune the delivery store: cannot open"),
    ],
    ids=["deliveries", "replay-failed", "replay-id", "prune"],
)
def test_commands_exit_1_when_the_store_cannot_be_opened(
    make_app: Callable[..., Flask], tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "a-file").write_text("")
    app = make_app(store=f"sqlite:///{tmp_path / 'a-file' / 'deliveries.sqlite3'}")

    result = app.test_cli_runner().invoke(args=["oa-recall", *args])

    assert result.exit_code == 1
    assert message in result.output


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_replay_whose_outcome_cannot_be_recorded_says_so_and_exits_1(
    host: Host, store_url: str
) -> None:
    host.failing.add("index")
    delivery_id = host.recall("k1")
    host.failing.clear()

    def vanish(sender: Flask, event: RecallEvent, **_: Any) -> None:
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            conn.execute("DELETE FROM oa_recall_deliveries WHERE id = ?", (delivery_id,))

    with (
        messages_recalled.connected_to(vanish, host.app),
        capture_store_failures(host.app) as errors,
    ):
        result = host.cli("replay", delivery_id)

    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        f"{delivery_id}  done (not recorded in the store; see the log)  attempt 2;"
        f" ran: {INDEX} ok, messages_recalled:{__name__}.test_replay_whose_outcome_cannot_be_"
        "recorded_says_so_and_exits_1.<locals>.vanish ok"
    )
    assert [str(e) for e in errors] == [f"delivery {delivery_id} vanished from the store"]
