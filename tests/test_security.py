"""Sign computation, query canonicalisation, SdkAppid and signature checks."""

from __future__ import annotations

import pytest

from flask_oa_recall.errors import CallbackRejected
from flask_oa_recall.security import (
    canonical_query,
    check_sdk_app_id,
    check_signature,
    sign,
)

NOW = 1669872112


def test_sign_matches_published_test_vector() -> None:
    assert sign("xxxxyyyy", "1669872112") == (
        "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
    )


def test_sign_does_not_match_the_older_docs_typo_token() -> None:
    assert sign("xxxyyy", 1669872112) == (
        "e78a85473bed2cdc8d6fa8c4d5a4ba4735fd64156e15a99516b9890293e135de"
    )


@pytest.mark.parametrize("name", ["SdkAppid", "sdkappid", "SdkAppId", "SDKAPPID"], ids=lambda n: n)
def test_query_names_are_matched_case_insensitively(name: str) -> None:
    assert canonical_query([(name, "1400000000")]) == {"SdkAppid": "1400000000"}


def test_unknown_query_parameters_are_ignored() -> None:
    assert canonical_query([("foo", "bar"), ("ClientIP", "1.2.3.4")]) == {"ClientIP": "1.2.3.4"}


def test_repeated_parameter_with_same_value_counts_once() -> None:
    pairs = [("SdkAppid", "1"), ("sdkappid", "1")]
    assert canonical_query(pairs) == {"SdkAppid": "1"}


def test_repeated_parameter_with_different_values_is_ambiguous() -> None:
    with pytest.raises(CallbackRejected) as caught:
        canonical_query([("SdkAppid", "1"), ("SDKAPPID", "2")])
    assert caught.value.reason == "ambiguous_query"
    assert "SdkAppid" in caught.value.info


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing_sdkappid"),
        ("", "missing_sdkappid"),
        ("1400000001", "unknown_sdkappid"),
        ("abc", "unknown_sdkappid"),
        ("\uff11\uff14\uff10\uff10", "unknown_sdkappid"),
        ("9" * 40, "unknown_sdkappid"),
    ],
    ids=["missing", "empty", "foreign", "letters", "fullwidth-digits", "huge"],
)
def test_bad_sdk_app_id_is_rejected(value: str | None, reason: str) -> None:
    query = {} if value is None else {"SdkAppid": value}
    with pytest.raises(CallbackRejected) as caught:
        check_sdk_app_id(query, frozenset({1400000000}))
    assert caught.value.reason == reason


def test_sdk_app_id_in_the_allowed_set_is_returned() -> None:
    assert check_sdk_app_id({"SdkAppid": "2"}, frozenset({1, 2})) == 2


def _query(signature: str, request_time: str) -> dict[str, str]:
    return {"Sign": signature, "RequestTime": request_time}


def test_valid_signature_passes() -> None:
    check_signature(_query(sign("t", NOW), str(NOW)), ["t"], NOW, 60)


def test_upper_case_signature_passes() -> None:
    check_signature(_query(sign("t", NOW).upper(), str(NOW)), ["t"], NOW, 60)


def test_any_of_several_tokens_passes_for_rotation() -> None:
    check_signature(_query(sign("new", NOW), str(NOW)), ["old", "new"], NOW, 60)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({}, "missing_signature"),
        ({"Sign": sign("t", NOW)}, "missing_signature"),
        ({"RequestTime": str(NOW)}, "missing_signature"),
        (_query(sign("t", NOW), "12ab"), "malformed_request_time"),
        (_query(sign("t", NOW), "-5"), "malformed_request_time"),
        (_query(sign("t", NOW - 61), str(NOW - 61)), "stale_request"),
        (_query(sign("t", NOW + 61), str(NOW + 61)), "stale_request"),
        (_query(sign("other", NOW), str(NOW)), "bad_signature"),
        (_query("z" * 64, str(NOW)), "bad_signature"),
        (_query("é", str(NOW)), "bad_signature"),
    ],
    ids=[
        "nothing",
        "no-time",
        "no-sign",
        "time-letters",
        "time-negative",
        "too-old",
        "too-new",
        "wrong-token",
        "garbage",
        "non-ascii",
    ],
)
def test_bad_signature_is_rejected(query: dict[str, str], reason: str) -> None:
    with pytest.raises(CallbackRejected) as caught:
        check_signature(query, ["t"], NOW, 60)
    assert caught.value.reason == reason


def test_skew_window_edge_is_inclusive() -> None:
    check_signature(_query(sign("t", NOW - 60), str(NOW - 60)), ["t"], NOW, 60)


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import flask_oa_recall.security as security

    calls: list[tuple[bytes, bytes]] = []
    real = security.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    check_signature(_query(sign("a", NOW), str(NOW)), ["a", "b", "c"], NOW, 60)
    assert len(calls) == 3
