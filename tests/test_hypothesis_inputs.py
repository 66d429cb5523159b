"""Property-based tests: whatever arrives at the callback URL, the answer is the envelope.

Hypothesis generates the method, the query string and the raw body together and posts them
through the test client of an app with the default SQLite store. For every input:

- the answer is JSON with exactly ``ActionStatus``/``ErrorCode``/``ErrorInfo`` and a status from
  the documented set, never a 5xx and never an exception (``TESTING`` propagates exceptions);
- a rejection carries the ``ErrorCode`` of its documented reason, and ``callback_rejected``
  fired with that reason;
- no receiver runs for a rejected request;
- nothing accepted is dropped: every accepted recall led to exactly one receiver call per new
  message, or its messages were known duplicates; no message is dispatched twice.

The runs are derandomised (a fixed seed per test, no example database), so CI sees the same
inputs every time. ``pytest --hypothesis-show-statistics`` prints how many were tried.
"""

from __future__ import annotations

import json
import string
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from flask_oa_recall import (
    REJECTIONS,
    Callback,
    OARecall,
    RecallEvent,
    callback_received,
    callback_rejected,
    messages_recalled,
)
from flask_oa_recall.events import RECALL_COMMAND
from flask_oa_recall.security import QUERY_NAMES
from flask_oa_recall.testing import recall_body, sign

SDK_APP_ID = 1400000000
OTHER_APP_ID = 1400000042
FOREIGN_APP_ID = 1400000001
TOKEN = "hypothesis-token"
OTHER_TOKEN = "other-app-token"
PATH = "/tencent-im/callback"

#: Every status the route may answer (``REJECTIONS`` plus 200); 503 is excluded on purpose:
#: it means the store *and* a receiver failed, which none of these inputs can cause.
DOCUMENTED_STATUSES = {200} | {r.status for r in REJECTIONS.values() if r.status != 503}
CODE_TO_REASON = {r.error_code: r for r in REJECTIONS.values()}
METHODS = [
    "POST",
    "GET",
    "HEAD",
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "FOO",
    "post",
]

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Harness:
    """An app with receivers that record what they were given."""

    app: Flask
    recalled: Counter[tuple[int, str, str]] = field(default_factory=Counter)
    received: list[Callback] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    accepted: int = 0

    def post(
        self, method: str, query: str, body: bytes, *, path: str = PATH
    ) -> tuple[int, dict[str, Any] | None, list[RecallEvent], list[Callback]]:
        """Send one request; return status, parsed envelope, and what the receivers got."""
        events: list[RecallEvent] = []
        before_received = len(self.received)
        before_rejected = len(self.rejected)

        def on_recall(sender: Flask, event: RecallEvent, **_: Any) -> None:
            events.append(event)

        client = self.app.test_client()
        with messages_recalled.connected_to(on_recall, self.app):
            response = client.open(
                path, method=method, data=body, environ_overrides={"QUERY_STRING": query}
            )
        self.requests += 1
        status = response.status_code
        assert status in DOCUMENTED_STATUSES, (status, response.data[:200])
        callbacks = self.received[before_received:]
        if method.upper() == "HEAD":
            assert response.data == b""
            data = None
        else:
            assert response.mimetype == "application/json"
            data = json.loads(response.data)
            assert isinstance(data, dict)
            assert set(data) == {"ActionStatus", "ErrorCode", "ErrorInfo"}
            assert isinstance(data["ErrorInfo"], str)
        if currently_in_test_context():
            event(f"{status} {data['ErrorCode'] if data else '-'}")
        if status == 200:
            self.accepted += 1
            if data is not None:
                assert data == {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
            assert len(callbacks) == 1
            assert len(self.rejected) == before_rejected
        else:
            assert events == [], "a receiver ran for a rejected request"
            assert callbacks == [], "callback_received fired for a rejected request"
            rejections = self.rejected[before_rejected:]
            assert len(rejections) == 1
            rejection = REJECTIONS[rejections[0]["reason"]]
            assert rejection.status == status
            if data is not None:
                assert data["ActionStatus"] == "FAIL"
                assert data["ErrorCode"] == rejection.error_code
                assert data["ErrorInfo"]
                assert TOKEN not in data["ErrorInfo"]
        return status, data, events, callbacks

    def check_recall_kept(
        self, body: bytes, events: Sequence[RecallEvent], callbacks: Sequence[Callback]
    ) -> None:
        """An accepted recall: each message dispatched once now, or known from before."""
        (callback,) = callbacks
        assert callback.command == RECALL_COMMAND
        parsed = json.loads(body.decode("utf-8"))
        oa = parsed["Official_Account"]
        sdk = callback.sdk_app_id
        sent = {entry["MsgKey"] for entry in parsed["WithdrawMsgList"]}
        given_now = [k for e in events for k in e.msg_keys]
        assert len(given_now) == len(set(given_now)), "a message was given twice in one request"
        for key in sent:
            known = self.recalled[(sdk, oa, key)] > 0
            if key in given_now:
                assert not known, f"{key!r} was dispatched a second time"
            else:
                assert known, f"accepted {key!r} reached no receiver and was not a duplicate"
        for key in given_now:
            assert key in sent
            self.recalled[(sdk, oa, key)] += 1
        kept = self.app.extensions["oa_recall"].store(
            self.app.extensions["oa_recall"].settings(self.app.config)
        )
        delivery = kept.get(callback.delivery_id)
        assert delivery is not None, "an accepted delivery was not kept"
        assert delivery.status in ("done", "duplicate")


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One app per module (examples share it, as real traffic shares a server)."""
    instance = tmp_path_factory.mktemp("hypothesis-instance")
    app = Flask("hypothesis_host", instance_path=str(instance))
    app.config.update(
        TESTING=True,
        OA_RECALL_SDKAPPID=[SDK_APP_ID, OTHER_APP_ID],
        OA_RECALL_TOKENS={SDK_APP_ID: [TOKEN], OTHER_APP_ID: [OTHER_TOKEN]},
        OA_RECALL_STORE=None,  # the default: SQLite in the instance folder
    )
    OARecall(app)
    h = Harness(app)

    def on_callback(sender: Flask, callback: Callback, **_: Any) -> None:
        h.received.append(callback)

    def on_reject(sender: Flask, **kwargs: Any) -> None:
        h.rejected.append(kwargs)

    callback_received.connect(on_callback, app, weak=False)
    callback_rejected.connect(on_reject, app, weak=False)
    yield h
    callback_received.disconnect(on_callback, app)
    callback_rejected.disconnect(on_reject, app)
    print(f"\n[hypothesis] {h.requests} requests, {h.accepted} accepted")


def signed_pairs(
    *, sdk_app_id: int = SDK_APP_ID, token: str = TOKEN, command: str = RECALL_COMMAND
) -> list[tuple[str, str]]:
    """A correct query for ``sdk_app_id``, signed now."""
    when = str(int(time.time()))
    return [
        ("SdkAppid", str(sdk_app_id)),
        ("CallbackCommand", command),
        ("contenttype", "json"),
        ("ClientIP", "127.0.0.1"),
        ("OptPlatform", "RESTAPI"),
        ("Sign", sign(token, when)),
        ("RequestTime", when),
    ]


def encode(pairs: Sequence[tuple[str, str]]) -> str:
    """A query string, percent-encoded as a WSGI server hands it over."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


# --- strategies -------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**40)
    | st.integers(min_value=-(10**40), max_value=-1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def case_variant(draw: st.DrawFn, name: str) -> str:
    """``name`` with each letter's case chosen freely."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(name, flips, strict=True))


msg_keys = st.sampled_from(["71_1_1698741698", "72_1_1698741699", "73_1_1698741700"]) | st.text(
    string.ascii_letters + string.digits + "_#@", min_size=1, max_size=20
)
accounts = st.sampled_from(["@TOA#_one", "#TOA#_123", "@TOA#_two"]) | st.text(
    min_size=1, max_size=12
)


@st.composite
def valid_recall(draw: st.DrawFn) -> dict[str, Any]:
    """A recall body the schema accepts (keys repeat across examples, to exercise dedup)."""
    keys = draw(st.lists(msg_keys, min_size=1, max_size=5))
    event_time = draw(st.integers(0, 253_402_300_799_999) | st.integers(0, 10**13).map(str))
    return recall_body(keys, official_account=draw(accounts), event_time_ms=event_time)


BROKEN_VALUES = st.one_of(
    json_values,
    st.just(10**400),
    st.just(-(10**400)),
    st.just(-1),
    st.just(""),
    st.just("9" * 5000),
    st.just("x" * 70_000),
    st.just([[[[[[[[[[]]]]]]]]]]),
)


@st.composite
def broken_recall(draw: st.DrawFn) -> tuple[bytes, str]:
    """A valid recall body with one field deleted, replaced or joined by a stranger."""
    body = draw(valid_recall())
    target = draw(
        st.sampled_from(
            [
                "CallbackCommand",
                "Official_Account",
                "WithdrawMsgList",
                "EventTime",
                "MsgKey",
                "entry",
                "extra",
            ]
        )
    )
    how = draw(st.sampled_from(["delete", "replace"]))
    value = draw(BROKEN_VALUES)
    if target == "MsgKey":
        entry = body["WithdrawMsgList"][0]
        if how == "delete":
            del entry["MsgKey"]
        else:
            entry["MsgKey"] = value
    elif target == "entry":
        body["WithdrawMsgList"][0] = value
    elif target == "extra":
        body[draw(st.text(max_size=10))] = value
    elif how == "delete":
        del body[target]
    else:
        body[target] = value
    return json.dumps(body).encode(), f"{how} {target}"


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


raw_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    valid_recall().map(lambda b: json.dumps(b).encode()),
    broken_recall().map(lambda t: t[0]),
    valid_recall().map(lambda b: json.dumps(b, ensure_ascii=False).encode("utf-16")),
    valid_recall().map(lambda b: json.dumps(b, ensure_ascii=False).encode("latin-1", "replace")),
    st.integers(1, 3000).map(nested),
    st.integers(1, 3000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    st.just(b'{"CallbackCommand": "x", "CallbackCommand": "' + RECALL_COMMAND.encode() + b'"}'),
    st.text(st.characters(blacklist_categories=()), max_size=100).map(
        lambda t: t.encode("utf-8", "surrogatepass")
    ),
    st.sampled_from([b"", b"null", b"NaN", b"[]", b'"s"', b"\xef\xbb\xbf{}", b"{}" * 3]),
)


@st.composite
def mutated_query(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """A signed query changed in a few ways: repeats, case variants, drops, strangers."""
    pairs = signed_pairs(sdk_app_id=draw(st.sampled_from([SDK_APP_ID, OTHER_APP_ID])))
    if pairs[0][1] == str(OTHER_APP_ID):
        pairs = signed_pairs(sdk_app_id=OTHER_APP_ID, token=OTHER_TOKEN)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(pairs) - 1))
        name, value = pairs[i]
        how = draw(
            st.sampled_from(["repeat", "repeat-other", "case", "drop", "stranger", "value", "swap"])
        )
        if how == "repeat":
            pairs.append((draw(case_variant(name)), value))
        elif how == "repeat-other":
            pairs.append(
                (
                    draw(case_variant(name)),
                    draw(
                        st.sampled_from([str(FOREIGN_APP_ID), value.upper(), " " + value])
                        | st.text(max_size=12)
                    ),
                )
            )
        elif how == "case":
            pairs[i] = (draw(case_variant(name)), value)
        elif how == "drop" and len(pairs) > 1:
            del pairs[i]
        elif how == "stranger":
            pairs.insert(i, (draw(st.text(max_size=8)), draw(st.text(max_size=8))))
        elif how == "value":
            pairs[i] = (name, draw(st.text(max_size=20)))
        elif how == "swap":
            j = draw(st.integers(0, len(pairs) - 1))
            pairs[i], pairs[j] = pairs[j], pairs[i]
    return encode(pairs), pairs


raw_queries = st.one_of(
    mutated_query().map(lambda t: t[0]),
    st.binary(max_size=120).map(lambda b: b.decode("latin-1")),
    st.lists(
        st.tuples(
            st.sampled_from(sorted(QUERY_NAMES.values())).flatmap(case_variant),
            st.text(max_size=20),
        ),
        max_size=8,
    ).map(encode),
    st.text(string.printable, max_size=200),
)


# --- the properties ---------------------------------------------------------------------------


@FUZZ
@given(method=st.just("POST") | st.sampled_from(METHODS), query=raw_queries, body=raw_bodies)
def test_any_method_query_and_body_get_the_envelope(
    harness: Harness, method: str, query: str, body: bytes
) -> None:
    status, _, events, callbacks = harness.post(method, query, body)
    if status == 200 and callbacks[0].command == RECALL_COMMAND:
        harness.check_recall_kept(body, events, callbacks)


@FUZZ
@given(body=raw_bodies)
def test_signed_request_with_any_body_gets_the_envelope(harness: Harness, body: bytes) -> None:
    status, data, events, callbacks = harness.post("POST", encode(signed_pairs()), body)
    if status == 200:
        harness.check_recall_kept(body, events, callbacks)
    else:
        assert data is not None
        assert CODE_TO_REASON[data["ErrorCode"]].status in (400, 413)


@FUZZ
@given(case=broken_recall())
def test_recall_with_one_field_broken_is_a_400_or_harmless(
    harness: Harness, case: tuple[bytes, str]
) -> None:
    body, _how = case
    status, data, events, callbacks = harness.post("POST", encode(signed_pairs()), body)
    if status == 200:
        # Only a stranger field, a tolerated value or a string EventTime can leave it valid.
        harness.check_recall_kept(body, events, callbacks)
    else:
        assert data is not None
        assert status in (400, 413)
        assert data["ErrorCode"] in (40001, 40002, 40003, 41301)


@FUZZ
@given(case=mutated_query(), body=valid_recall())
def test_repeated_or_case_varied_parameters_cannot_slip_past_a_check(
    harness: Harness, case: tuple[str, list[tuple[str, str]]], body: dict[str, Any]
) -> None:
    query, pairs = case
    raw = json.dumps(body).encode()
    status, _, events, callbacks = harness.post("POST", query, raw)
    ids = {v for k, v in pairs if k.lower() == "sdkappid"}
    signs = {v for k, v in pairs if k.lower() == "sign"}
    times = {v for k, v in pairs if k.lower() == "requesttime"}
    if status == 200:
        # Accepted only if every SdkAppid copy names one of ours and every Sign copy is the
        # right one for that app and the one RequestTime.
        assert len(ids) == 1
        (app_id,) = ids
        assert app_id.strip() in (str(SDK_APP_ID), str(OTHER_APP_ID))
        token = TOKEN if app_id.strip() == str(SDK_APP_ID) else OTHER_TOKEN
        assert len(times) == 1
        (when,) = times
        assert len(signs) == 1
        assert next(iter(signs)).strip().lower() == sign(token, when)
        harness.check_recall_kept(raw, events, callbacks)
    if any(v.strip() not in (str(SDK_APP_ID), str(OTHER_APP_ID)) for v in ids):
        assert status != 200


# --- regressions found by the properties above ------------------------------------------------


@pytest.fixture
def fresh(make_app: Any) -> Iterator[Harness]:
    """A harness on a fresh app with a large body limit and the SQLite store."""
    app = make_app(max_body_bytes=10_000_000, store=None)
    h = Harness(app)

    def on_callback(sender: Flask, callback: Callback, **_: Any) -> None:
        h.received.append(callback)

    def on_reject(sender: Flask, **kwargs: Any) -> None:
        h.rejected.append(kwargs)

    with (
        callback_received.connected_to(on_callback, app),
        callback_rejected.connected_to(on_reject, app),
    ):
        yield h


def _signed(app: Flask) -> str:
    when = str(int(time.time()))
    return encode(
        [
            ("SdkAppid", str(SDK_APP_ID)),
            ("CallbackCommand", RECALL_COMMAND),
            ("Sign", sign(app.config["OA_RECALL_TOKENS"][0], when)),
            ("RequestTime", when),
        ]
    )


@pytest.mark.parametrize(
    "body",
    [nested(100_000), nested(100_000, b'{"a":', b"}"), b"[" * 100_000],
    ids=["arrays", "objects", "unclosed"],
)
def test_100000_nested_levels_are_a_400_not_a_recursion_error(fresh: Harness, body: bytes) -> None:
    status, data, _, _ = fresh.post("POST", _signed(fresh.app), body)
    assert status == 400
    assert data is not None
    assert data["ErrorCode"] == 40001
    assert data["ErrorInfo"] == "The body is not a UTF-8 JSON object."


def test_event_time_string_of_5000_digits_is_a_400_not_a_500(fresh: Harness) -> None:
    """Regression: int() refused the digits with ValueError, which escaped as a 500."""
    body = json.dumps(recall_body(event_time_ms="1" * 5000)).encode()
    status, data, _, _ = fresh.post("POST", _signed(fresh.app), body)
    assert status == 400
    assert data == {
        "ActionStatus": "FAIL",
        "ErrorCode": 40002,
        "ErrorInfo": "EventTime: Out of range.",
    }


@pytest.mark.parametrize(
    "body",
    [
        b'{"CallbackCommand":"%s","Official_Account":"@TOA#_\\ud800","WithdrawMsgList":'
        b'[{"MsgKey":"71_1_1"}],"EventTime":1}' % RECALL_COMMAND.encode(),
        b'{"CallbackCommand":"%s","Official_Account":"@TOA#_a","WithdrawMsgList":'
        b'[{"MsgKey":"71_1_\\uDFFF"}],"EventTime":1}' % RECALL_COMMAND.encode(),
    ],
    ids=["official-account", "msg-key"],
)
def test_lone_surrogate_escape_is_a_400_not_a_500(fresh: Harness, body: bytes) -> None:
    """Regression: SQLite could not encode a lone surrogate; the error escaped as a 500."""
    status, data, _, _ = fresh.post("POST", _signed(fresh.app), body)
    assert status == 400
    assert data is not None
    assert data["ErrorCode"] == 40001


def test_escaped_surrogate_pair_is_a_character_and_accepted(fresh: Harness) -> None:
    body = json.dumps(
        recall_body(["71_1_1698741698"], official_account="@TOA#_\U0001f600")
    ).encode()
    assert b"\\ud83d\\ude00" in body
    status, _, events, _ = fresh.post("POST", _signed(fresh.app), body)
    assert status == 200
    assert events[0].official_account == "@TOA#_\U0001f600"


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "FOO"])
@pytest.mark.parametrize("path", [PATH, PATH + "/", PATH + "/below"])
def test_unusual_methods_get_the_envelope(fresh: Harness, method: str, path: str) -> None:
    """Regression: methods outside Flask's list got Werkzeug's HTML 405."""
    status, data, _, _ = fresh.post(method, "", b"", path=path)
    assert data is not None
    if path == PATH:
        assert (status, data["ErrorCode"]) == (405, 40501)
    else:
        assert (status, data["ErrorCode"]) == (404, 40401)


def test_raw_non_utf8_bytes_in_the_query_do_not_crash(fresh: Harness) -> None:
    """Regression: Werkzeug raised UnicodeDecodeError on a raw 0xFF in the query (a 500).

    gunicorn refuses such a URL itself; other WSGI servers pass it on.
    """
    query = (_signed(fresh.app) + "&Extra=\xff\xfe").encode("latin-1").decode("latin-1")
    body = json.dumps(recall_body(["71_1_1698741698"])).encode()
    status, _, events, callbacks = fresh.post("POST", query, body)
    assert status == 200
    assert [e.msg_keys for e in events] == [("71_1_1698741698",)]
    assert callbacks[0].query["Extra"] == "\ufffd\ufffd"


def test_duplicate_json_keys_take_the_last_value_on_receipt_and_on_replay(fresh: Harness) -> None:
    """Python's json keeps the last of duplicate keys; the kept raw body replays the same way."""
    from flask_oa_recall.delivery import prepare_replay

    body = (
        b'{"CallbackCommand":"%s","Official_Account":"@TOA#_first","Official_Account":"@TOA#_last",'
        b'"WithdrawMsgList":[{"MsgKey":"k1","MsgKey":"k2"}],"EventTime":1}'
        % RECALL_COMMAND.encode()
    )
    status, _, events, callbacks = fresh.post("POST", _signed(fresh.app), body)
    assert status == 200
    assert (events[0].official_account, events[0].msg_keys) == ("@TOA#_last", ("k2",))
    state = fresh.app.extensions["oa_recall"]
    store = state.store(state.settings(fresh.app.config))
    replayed = prepare_replay(store, callbacks[0].delivery_id, 60)
    assert replayed.event is not None
    assert (replayed.event.official_account, replayed.event.msg_keys) == ("@TOA#_last", ("k2",))


def _deep_recall(key: str, depth: int) -> bytes:
    head = json.dumps(recall_body([key]))[:-1].encode()
    return head + b', "Deep": ' + nested(depth) + b"}"


def test_nesting_deeper_than_the_fixed_bound_is_a_400(fresh: Harness) -> None:
    """Regression: json.loads' limit depends on the caller's stack, so a body ~980 deep was
    accepted by the view and then could not be parsed again by ``replay`` (deeper stack)."""
    status, data, _, _ = fresh.post("POST", _signed(fresh.app), _deep_recall("k-deep", 600))
    assert status == 400
    assert data == {
        "ActionStatus": "FAIL",
        "ErrorCode": 40001,
        "ErrorInfo": "The body is nested more than 512 levels deep.",
    }


def test_brackets_inside_strings_do_not_count_as_nesting(fresh: Harness) -> None:
    body = json.dumps(recall_body(["k-brackets"], Note='[{"' * 700 + '\\"]')).encode()
    status, _, events, _ = fresh.post("POST", _signed(fresh.app), body)
    assert status == 200
    assert events[0].msg_keys == ("k-brackets",)


def test_deepest_accepted_body_can_be_replayed_by_the_cli(fresh: Harness) -> None:
    fail = True

    def receiver(sender: Flask, event: RecallEvent, **_: Any) -> None:
        if fail:
            raise RuntimeError("first attempt fails")

    with messages_recalled.connected_to(receiver, fresh.app):
        status, _, _, _ = fresh.post("POST", _signed(fresh.app), _deep_recall("k-512", 511))
        assert status == 200
        fail = False
        result = fresh.app.test_cli_runner().invoke(args=["oa-recall", "replay", "--failed"])
    assert result.exit_code == 0, result.output
    assert "Replayed 1: 1 finished, 0 not." in result.output
