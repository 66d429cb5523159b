"""Gunicorn workers that start together open the default SQLite store together."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from flask_oa_recall.errors import StoreError
from flask_oa_recall.store import NewDelivery, SQLiteStore

WORKERS = 8
ROUNDS = 12


def _open_and_claim(
    folder: str, index: int, start_at: float, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    for round_ in range(ROUNDS):
        # Each round a fresh file, opened by every worker at the same instant.
        time.sleep(max(0.0, start_at + round_ * 0.2 - time.time()))
        results.put(_claim_once(f"{folder}/round{round_}.sqlite3", index))


def _claim_once(path: str, index: int) -> tuple[str, object]:
    store = SQLiteStore(path)
    delivery = NewDelivery(
        id=f"d{index}",
        received_at=time.time(),
        sdk_app_id=1,
        command="OfficialAccount.CallbackAfterMsgWithDraw",
        query={},
        body="{}",
        official_account="@TOA#_x",
        msg_keys=("k",),
    )
    try:
        claim = store.begin(delivery, 60)
    except StoreError as err:
        return ("error", str(err))
    finally:
        store.close()
    return ("owned", sorted(claim.owned))


def test_workers_opening_a_fresh_file_at_once_all_keep_and_one_claims(tmp_path: Path) -> None:
    # spawn, not fork: a forked child of a threaded pytest process may deadlock.
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 2.0
    processes = [
        ctx.Process(target=_open_and_claim, args=(str(tmp_path), i, start_at, results))
        for i in range(WORKERS)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=30) for _ in range(WORKERS * ROUNDS)]
    for process in processes:
        process.join(timeout=30)
    assert [o for o in outcomes if o[0] == "error"] == []
    owners = [o for o in outcomes if o == ("owned", ["k"])]
    assert len(owners) == ROUNDS  # one owner per fresh file
