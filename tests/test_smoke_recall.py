"""The seed page's sample request, end to end through the test client."""

from __future__ import annotations

import json

from flask import Flask
from flask.testing import FlaskClient

from flask_oa_recall.testing import capture_recalls, signed_query

SEED_BODY = (
    b'{"CallbackCommand":"OfficialAccount.CallbackAfterMsgWithDraw","Official_Account":"#TOA#_123",'
    b'"WithdrawMsgList":[{"MsgKey":"71_1_1698741698"}],"EventTime":1670574414123}'
)


def test_seed_sample_is_accepted_and_emitted(app: Flask, client: FlaskClient) -> None:
    with capture_recalls(app) as events:
        response = client.post(f"/tencent-im/callback?{signed_query(app)}", data=SEED_BODY)
    assert response.status_code == 200
    assert json.loads(response.data) == {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
    assert [e.msg_keys for e in events] == [("71_1_1698741698",)]
    assert events[0].official_account == "#TOA#_123"
