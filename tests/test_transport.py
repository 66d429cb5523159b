"""Transport edge cases over raw sockets against a real gunicorn.

Bodies over the limit with and without ``Content-Length``, chunked bodies that are fine, broken
or cut off, a ``Content-Length`` that lies, clients that leave mid-body, long query strings,
repeated parameters, and one keep-alive connection carrying many callbacks.

Each answer the extension gives is the JSON envelope; after each test the server still answers
a valid callback on a new connection, and its log shows no traceback. The one answer that is
not the envelope is gunicorn's own 414 for a request line over ``--limit-request-line``: the
request never reaches the app (documented in the README's "Failure modes").
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from flask_oa_recall import RECALL_COMMAND
from flask_oa_recall.testing import recall_body, sign, signed_query
from tests.apps.host import SDK_APP_ID, TOKEN
from tests.hardening_apps.rawhttp import RawConnection, RawResponse, chunked, request_bytes
from tests.hardening_apps.record import count
from tests.servers import GunicornServer, gunicorn_server, wait_for

pytestmark = pytest.mark.e2e

APP = "tests.apps.host:create_app()"
PATH = "/tencent-im/callback"
LIMIT = 4096
FOREIGN_APP_ID = 1400000001
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


@dataclass
class Served:
    """The running server and the receivers' record."""

    server: GunicornServer
    record: Path

    @property
    def port(self) -> int:
        return self.server.port

    def dispatched(self, key: str) -> int:
        """How often the ``mirror`` receiver finished ``key``."""
        return count(self.record, "done", "mirror")[key]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """gunicorn, 2 gthread workers of 4 threads (keep-alive), a 4 KiB body limit."""
    tmp = tmp_path_factory.mktemp("transport")
    env = {
        "OA_TEST_RECORD": str(tmp / "record.txt"),
        "OA_TEST_INSTANCE": str(tmp / "instance"),
        "OA_RECALL_MAX_BODY_BYTES": str(LIMIT),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("OA_RECALL_", "OA_TEST_")):
                mp.delenv(name)
        with gunicorn_server(
            APP, tmp, env=env, workers=2, worker_class="gthread", threads=4, name="transport"
        ) as server:
            yield Served(server, Path(env["OA_TEST_RECORD"]))


@pytest.fixture(autouse=True)
def still_serving(served: Served) -> Iterator[None]:
    """After each test: a valid callback on a new connection is accepted; no traceback."""
    yield
    key = f"after-{uuid.uuid4().hex}"
    with RawConnection(served.port) as conn:
        response = conn.exchange(recall(key))
    assert (response.status, response.envelope()) == (200, OK)
    assert served.dispatched(key) == 1
    log = served.server.log()
    assert "Traceback" not in log, served.server.log_tail()
    assert '" 500 ' not in log, served.server.log_tail()


def target(**query: Any) -> str:
    return f"{PATH}?{signed_query(sdk_app_id=SDK_APP_ID, token=TOKEN, **query)}"


def recall_json(key: str, **extra: Any) -> bytes:
    return json.dumps(recall_body([key], official_account="@TOA#_transport", **extra)).encode()


def recall(key: str, **headers: str) -> bytes:
    return request_bytes(target(), recall_json(key), headers=headers)


def assert_rejected(response: RawResponse, status: int, code: int) -> dict[str, Any]:
    data = response.envelope()
    assert (response.status, data["ActionStatus"], data["ErrorCode"]) == (status, "FAIL", code)
    return data


def marker_in_log(served: Served, marker: str) -> str:
    """The access-log line of the request whose query carried ``marker`` (waits for it)."""
    line: str = wait_for(
        lambda: next((ln for ln in served.server.log().splitlines() if marker in ln), None),
        timeout=15,
        what=f"the access-log line of {marker}",
    )
    return line


# --- body size ---------------------------------------------------------------------------------


def test_body_over_the_limit_with_content_length_is_413(served: Served) -> None:
    key = f"big-{uuid.uuid4().hex}"
    body = recall_json(key, Padding="x" * (LIMIT * 2))
    with RawConnection(served.port) as conn:
        response = conn.exchange(request_bytes(target(), body))
    data = assert_rejected(response, 413, 41301)
    assert data["ErrorInfo"] == "The body is larger than OA_RECALL_MAX_BODY_BYTES."
    assert served.dispatched(key) == 0


def test_body_over_the_limit_chunked_without_content_length_is_413(served: Served) -> None:
    key = f"bigchunked-{uuid.uuid4().hex}"
    body = recall_json(key, Padding="x" * (LIMIT * 2))
    parts = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    with RawConnection(served.port) as conn:
        response = conn.exchange(
            request_bytes(
                target(),
                chunked(parts),
                content_length=None,
                headers={"Transfer-Encoding": "chunked"},
            )
        )
    assert_rejected(response, 413, 41301)
    assert served.dispatched(key) == 0


def test_chunked_body_within_the_limit_is_accepted(served: Served) -> None:
    key = f"chunked-{uuid.uuid4().hex}"
    body = recall_json(key)
    parts = [body[i : i + 7] for i in range(0, len(body), 7)]
    with RawConnection(served.port) as conn:
        response = conn.exchange(
            request_bytes(
                target(),
                chunked(parts),
                content_length=None,
                headers={"Transfer-Encoding": "chunked"},
            )
        )
    assert (response.status, response.envelope()) == (200, OK)
    assert served.dispatched(key) == 1


def test_malformed_chunk_size_is_a_400_not_a_500(served: Served) -> None:
    """Regression: gunicorn's InvalidChunkSize escaped the view as an HTML 500."""
    with RawConnection(served.port) as conn:
        response = conn.exchange(
            request_bytes(
                target(),
                b"zz\r\nabc\r\n0\r\n\r\n",
                content_length=None,
                headers={"Transfer-Encoding": "chunked"},
            )
        )
    data = assert_rejected(response, 400, 40006)
    assert data["ErrorInfo"] == (
        "The body could not be read: it ended early or its chunks are malformed."
    )


def test_chunked_body_that_breaks_off_is_a_400(served: Served) -> None:
    """Regression: gunicorn's NoMoreData escaped the view as an HTML 500."""
    key = f"brokechunk-{uuid.uuid4().hex}"
    body = recall_json(key)
    with RawConnection(served.port) as conn:
        conn.send(
            request_bytes(
                target(),
                b"%x\r\n" % (len(body) + 100) + body,
                content_length=None,
                headers={"Transfer-Encoding": "chunked"},
            )
        )
        conn.half_close()
        response = conn.read_response()
    assert_rejected(response, 400, 40006)
    assert served.dispatched(key) == 0


# --- a Content-Length that lies ----------------------------------------------------------------


def test_content_length_shorter_than_the_body_reads_only_that_much(served: Served) -> None:
    """The view sees the first 10 bytes: not JSON, a 400. The rest is not a request the app
    sees (gunicorn reads it as the next request on the connection and refuses it)."""
    key = f"shortcl-{uuid.uuid4().hex}"
    with RawConnection(served.port) as conn:
        response = conn.exchange(request_bytes(target(), recall_json(key), content_length=10))
    assert_rejected(response, 400, 40001)
    assert served.dispatched(key) == 0


def test_content_length_longer_than_the_body_then_eof_gets_what_arrived(served: Served) -> None:
    """gunicorn hands the app what arrived before the client's FIN. A complete JSON body is
    then accepted (and dispatched once); a truncated one is a 400."""
    whole = f"longcl-{uuid.uuid4().hex}"
    cut = f"longcl-cut-{uuid.uuid4().hex}"
    body = recall_json(whole)
    with RawConnection(served.port) as conn:
        conn.send(request_bytes(target(), body, content_length=len(body) + 50))
        conn.half_close()
        response = conn.read_response()
    assert (response.status, response.envelope()) == (200, OK)
    assert served.dispatched(whole) == 1

    body = recall_json(cut)
    with RawConnection(served.port) as conn:
        conn.send(request_bytes(target(), body[: len(body) // 2], content_length=len(body)))
        conn.half_close()
        response = conn.read_response()
    assert_rejected(response, 400, 40001)
    assert served.dispatched(cut) == 0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_that_disconnects_mid_body_dispatches_nothing(served: Served, framing: str) -> None:
    key = f"gone-{framing}-{uuid.uuid4().hex}"
    marker = uuid.uuid4().hex
    body = recall_json(key)
    half = body[: len(body) // 2]
    if framing == "chunked":
        data = request_bytes(
            target(probe=marker),
            b"%x\r\n" % len(body) + half,
            content_length=None,
            headers={"Transfer-Encoding": "chunked"},
        )
    else:
        data = request_bytes(target(probe=marker), half, content_length=len(body))
    conn = RawConnection(served.port)
    conn.send(data)
    conn.close()
    line = marker_in_log(served, marker)
    assert '" 400 ' in line, line
    assert served.dispatched(key) == 0


# --- the query string --------------------------------------------------------------------------


def test_long_query_string_within_gunicorns_line_limit_is_served(served: Served) -> None:
    key = f"longq-{uuid.uuid4().hex}"
    padding = "&".join(f"x{i}={'y' * 20}" for i in range(120))
    with RawConnection(served.port) as conn:
        response = conn.exchange(request_bytes(f"{target()}&{padding}", recall_json(key)))
    assert (response.status, response.envelope()) == (200, OK)
    assert served.dispatched(key) == 1


def test_query_string_over_gunicorns_line_limit_is_refused_by_gunicorn(served: Served) -> None:
    """Not the envelope: gunicorn answers 414 itself and the app never runs."""
    key = f"hugeq-{uuid.uuid4().hex}"
    with RawConnection(served.port) as conn:
        response = conn.exchange(request_bytes(f"{target()}&x={'y' * 5000}", recall_json(key)))
    assert response.status == 414
    assert response.closes
    assert served.dispatched(key) == 0


def test_sdkappid_repeated_hundreds_of_times_with_one_foreign_copy_is_ambiguous(
    served: Served,
) -> None:
    key = f"manyids-{uuid.uuid4().hex}"
    names = ["SdkAppid", "sdkappid", "SDKAPPID", "SdkAppId"]
    copies = [f"{names[i % 4]}={SDK_APP_ID}" for i in range(150)]
    copies.insert(97, f"sdkAppid={FOREIGN_APP_ID}")
    with RawConnection(served.port) as conn:
        response = conn.exchange(request_bytes(f"{target()}&{'&'.join(copies)}", recall_json(key)))
    assert_rejected(response, 400, 40005)
    assert served.dispatched(key) == 0


Pairs = list[tuple[str, str]]


def _query(pairs: Pairs) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def _signed_pairs(sdk_app_id: int = SDK_APP_ID) -> list[tuple[str, str]]:
    when = str(int(time.time()))
    return [
        ("SdkAppid", str(sdk_app_id)),
        ("CallbackCommand", RECALL_COMMAND),
        ("contenttype", "json"),
        ("Sign", sign(TOKEN, when)),
        ("RequestTime", when),
    ]


REPEATS: dict[str, tuple[Callable[[Pairs], Pairs], int, int]] = {
    # name: (how the query is changed, expected status, ErrorCode)
    "same-sdkappid-twice": (lambda p: [*p, ("SdkAppid", str(SDK_APP_ID))], 200, 0),
    "same-sdkappid-in-another-case": (lambda p: [*p, ("SDKAPPID", str(SDK_APP_ID))], 200, 0),
    "foreign-sdkappid-after-ours": (lambda p: [*p, ("SdkAppid", str(FOREIGN_APP_ID))], 400, 40005),
    "foreign-sdkappid-before-ours": (lambda p: [("sdkappid", str(FOREIGN_APP_ID)), *p], 400, 40005),
    "foreign-sdkappid-in-lower-case-only": (
        lambda p: [("sdkappid", str(FOREIGN_APP_ID)), *p[1:]],
        403,
        40302,
    ),
    "foreign-sdkappid-as-SdkAppId-only": (
        lambda p: [("SdkAppId", str(FOREIGN_APP_ID)), *p[1:]],
        403,
        40302,
    ),
    "our-sdkappid-with-spaces": (lambda p: [("SdkAppid", f" {SDK_APP_ID} "), *p[1:]], 200, 0),
    "sign-twice-different-case": (lambda p: [*p, ("SIGN", p[3][1].upper())], 400, 40005),
    "sign-upper-case-alone": (lambda p: [*p[:3], ("Sign", p[3][1].upper()), p[4]], 200, 0),
    "second-wrong-sign": (lambda p: [*p, ("sign", "0" * 64)], 400, 40005),
    "second-request-time": (lambda p: [*p, ("requesttime", "1")], 400, 40005),
    "second-command": (lambda p: [*p, ("callbackcommand", "State.StateChange")], 400, 40005),
    "unknown-parameters-repeated": (lambda p: [*p, ("x", "1"), ("x", "2"), ("X", "3")], 200, 0),
    "name-with-a-trailing-space-is-not-sdkappid": (
        lambda p: [*p, ("SdkAppid ", str(FOREIGN_APP_ID))],
        200,
        0,
    ),
}


@pytest.mark.parametrize("case", sorted(REPEATS), ids=sorted(REPEATS))
def test_repeated_and_case_varied_parameters_over_real_http(served: Served, case: str) -> None:
    """A repeated parameter with the same value counts once; different values are a 400; a
    foreign SdkAppid cannot be slipped past by repetition, order or case."""
    change, status, code = REPEATS[case]
    key = f"repeat-{case}-{uuid.uuid4().hex}"
    query = _query(change(_signed_pairs()))
    with RawConnection(served.port) as conn:
        response = conn.exchange(request_bytes(f"{PATH}?{query}", recall_json(key)))
    data = response.envelope()
    assert (response.status, data["ErrorCode"]) == (status, code), data
    assert served.dispatched(key) == (1 if status == 200 else 0)


# --- keep-alive --------------------------------------------------------------------------------


def test_one_keep_alive_connection_carries_many_callbacks(served: Served) -> None:
    """300 requests in order on one connection: 100 new recalls, 100 redeliveries of them,
    100 invalid (bad Sign, foreign SdkAppid, bad JSON). Every answer is the envelope with the
    right code; the connection is never closed; each new MsgKey is dispatched exactly once."""
    run = uuid.uuid4().hex
    keys = [f"ka-{run}-{i}" for i in range(100)]
    bad = recall_json(f"ka-bad-{run}")
    wrong_sign = [*_signed_pairs()[:3], ("Sign", "0" * 64), _signed_pairs()[4]]
    invalid = [
        (f"{PATH}?{_query(wrong_sign)}", bad, 401, 40102),
        (f"{PATH}?{_query(_signed_pairs(FOREIGN_APP_ID))}", bad, 403, 40302),
        (target(), b'{"CallbackCommand": ', 400, 40001),
    ]
    plan: list[tuple[bytes, int, int]] = []
    for i, key in enumerate(keys):
        plan.append((recall(key), 200, 0))
        url, body, status, code = invalid[i % 3]
        plan.append((request_bytes(url, body), status, code))
        plan.append((recall(keys[i // 2]), 200, 0))  # a redelivery of an earlier key
    counts = {"sent": 0, "ok": 0, "rejected": 0}
    with RawConnection(served.port) as conn:
        for data, status, code in plan:
            response = conn.exchange(data)
            counts["sent"] += 1
            envelope = response.envelope()
            assert (response.status, envelope["ErrorCode"]) == (status, code), envelope
            assert not response.closes
            counts["ok" if status == 200 else "rejected"] += 1
    print(f"\n[keep-alive] {counts}")
    assert counts == {"sent": 300, "ok": 200, "rejected": 100}
    mirrored = count(served.record, "done", "mirror")
    assert {k: mirrored[k] for k in keys} == dict.fromkeys(keys, 1)
    assert mirrored[f"ka-bad-{run}"] == 0


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    """50 requests written at once, before reading any answer (HTTP/1.1 pipelining)."""
    run = uuid.uuid4().hex
    keys = [f"pipe-{run}-{i}" for i in range(50)]
    with RawConnection(served.port) as conn:
        conn.send(b"".join(recall(k) for k in keys))
        answers = [conn.read_response() for _ in keys]
    assert [(a.status, a.envelope()) for a in answers] == [(200, OK)] * 50
    mirrored = count(served.record, "done", "mirror")
    assert [mirrored[k] for k in keys] == [1] * 50
