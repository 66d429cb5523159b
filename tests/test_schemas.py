"""The marshmallow schemas: tolerant of Tencent's quirks, strict where it matters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, validate

from flask_oa_recall.errors import CallbackRejected
from flask_oa_recall.events import RecalledMessage
from flask_oa_recall.parsing import parse_body
from flask_oa_recall.schemas import (
    RecallBodySchema,
    WithdrawMsgSchema,
    first_error,
    load_recall,
    recall_body_schema,
)


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "CallbackCommand": "OfficialAccount.CallbackAfterMsgWithDraw",
        "Official_Account": "@TOA#_1",
        "WithdrawMsgList": [{"MsgKey": "71_1_1698741698"}],
        "EventTime": 1670574414123,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def test_event_time_as_numeric_string_is_accepted() -> None:
    assert load_recall(body(EventTime="1670574414123"))["EventTime"] == 1670574414123


def test_unknown_fields_are_kept_not_rejected() -> None:
    data = load_recall(body(Operator_Account="admin", WithdrawMsgList=[{"MsgKey": "k", "X": 1}]))
    assert data["Operator_Account"] == "admin"
    assert data["WithdrawMsgList"] == [RecalledMessage("k", {"X": 1})]
    assert data["WithdrawMsgList"][0].extra == {"X": 1}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"EventTime": True}, "EventTime"),
        ({"EventTime": -1}, "EventTime"),
        ({"EventTime": 10**20}, "EventTime"),
        ({"EventTime": "12x"}, "EventTime"),
        ({"EventTime": 1.5}, "EventTime"),
        ({"EventTime": ...}, "EventTime"),
        ({"Official_Account": ""}, "Official_Account"),
        ({"Official_Account": 5}, "Official_Account"),
        ({"WithdrawMsgList": []}, "WithdrawMsgList"),
        ({"WithdrawMsgList": [{}]}, "WithdrawMsgList"),
        ({"WithdrawMsgList": [{"MsgKey": ""}]}, "WithdrawMsgList"),
        ({"WithdrawMsgList": "71_1_1"}, "WithdrawMsgList"),
    ],
    ids=[
        "time-bool",
        "time-negative",
        "time-huge",
        "time-letters",
        "time-float",
        "time-missing",
        "oa-empty",
        "oa-number",
        "list-empty",
        "entry-no-key",
        "entry-empty-key",
        "list-string",
    ],
)
def test_broken_field_is_named_in_the_error(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        load_recall(body(**changes))
    assert first_error(caught.value).startswith(field)


def test_server_time_is_read_from_a_standard_msg_key() -> None:
    assert RecalledMessage("71_1_1698741698").server_time == 1698741698
    assert RecalledMessage("opaque").server_time is None


def test_server_time_ignores_non_ascii_digits() -> None:
    assert RecalledMessage("1_1_\u00b2").server_time is None
    assert RecalledMessage("1_1_\u0661\u0662").server_time is None


class _NestedSchemaOnly(RecallBodySchema):
    """The recall schema with a plain ``Nested`` list: every entry through the schema."""

    WithdrawMsgList = fields.Nested(
        WithdrawMsgSchema, many=True, required=True, validate=validate.Length(min=1)
    )


_ONLY_THE_NESTED_SCHEMA = _NestedSchemaOnly()

_ENTRY = st.one_of(
    st.fixed_dictionaries({"MsgKey": st.text(max_size=5)}),
    st.fixed_dictionaries({"MsgKey": st.one_of(st.none(), st.integers(), st.booleans())}),
    st.dictionaries(st.sampled_from(["MsgKey", "X", "msgkey"]), st.text(max_size=3), max_size=3),
    st.text(max_size=3),
    st.integers(),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(_ENTRY, max_size=4), _ENTRY))
def test_the_withdraw_list_fast_path_loads_exactly_what_the_nested_schema_loads(
    entries: Any,
) -> None:
    def outcome(schema: Schema) -> tuple[str, Any]:
        try:
            loaded = schema.load(body(WithdrawMsgList=entries))["WithdrawMsgList"]
        except ValidationError as err:
            return "error", err.messages
        return "loaded", [(m.msg_key, dict(m.extra)) for m in loaded]

    assert outcome(recall_body_schema) == outcome(_ONLY_THE_NESTED_SCHEMA)


@pytest.mark.parametrize(
    ("depth", "refused"),
    [(512, False), (513, True)],
)
@pytest.mark.parametrize("shape", ["arrays", "objects", "mixed"])
def test_bodies_nested_past_the_fixed_bound_are_refused_exactly_there(
    depth: int, refused: bool, shape: str
) -> None:
    # depth counts the top-level object: {"D": [[...]]} with depth - 1 levels inside it.
    inner = "1"
    for level in range(depth - 1):
        as_object = shape == "objects" or (shape == "mixed" and level % 2)
        inner = f'{{"k": {inner}}}' if as_object else f"[{inner}]"
    raw = f'{{"D": {inner}, "S": "[[[[{{{{"}}'.encode()
    if refused:
        with pytest.raises(CallbackRejected, match="nested more than 512"):
            parse_body(raw)
    else:
        assert parse_body(raw)["S"] == "[[[[{{"
