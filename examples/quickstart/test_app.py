def test_a_recall_reaches_the_receiver(oa_recall_post, oa_recall_events):
    response = oa_recall_post(msg_keys=["71_1_1698741698"])
    assert response.json == {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
    assert [event.msg_keys for event in oa_recall_events] == [("71_1_1698741698",)]


def test_each_test_starts_with_an_empty_store(oa_recall_post, oa_recall_events):
    # The same MsgKey as above, yet not a duplicate: every test gets a fresh memory:// store.
    oa_recall_post(msg_keys=["71_1_1698741698"])
    assert len(oa_recall_events) == 1


def test_a_wrong_token_is_refused(oa_recall_post, oa_recall_events):
    response = oa_recall_post(token="not-the-token")
    assert response.status_code == 401
    assert response.json["ErrorCode"] == 40102
    assert oa_recall_events == []
