"""``OA_RECALL_*`` validation: every mistake is caught at start-up and names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import OARecall
from flask_oa_recall.config import DEFAULTS, SettingsCache, parse_settings


def settings(**config: Any) -> Any:
    return parse_settings({"OA_RECALL_SDKAPPID": 1, **DEFAULTS, **config})


def test_defaults() -> None:
    s = settings()
    assert s.sdk_app_ids == frozenset({1})
    assert s.tokens == {1: ()}
    assert not s.authenticates
    assert s.path == "/tencent-im/callback"
    assert s.max_skew_seconds == 60
    assert s.max_body_bytes == 65536
    assert s.store_url is None
    assert s.dispatch == "sync"
    assert s.slow_dispatch_seconds == 1.0
    assert s.lease_seconds == 60


def test_list_of_app_ids_and_shared_tokens() -> None:
    s = parse_settings({"OA_RECALL_SDKAPPID": [1, "2"], "OA_RECALL_TOKENS": ["a", "b"]})
    assert s.sdk_app_ids == frozenset({1, 2})
    assert s.tokens == {1: ("a", "b"), 2: ("a", "b")}
    assert s.authenticates


def test_tokens_per_app_id_with_string_keys() -> None:
    s = parse_settings({"OA_RECALL_SDKAPPID": [1, 2], "OA_RECALL_TOKENS": {"1": ["a"]}})
    assert s.tokens == {1: ("a",), 2: ()}


@pytest.mark.parametrize(
    ("config", "error", "words"),
    [
        ({"OA_RECALL_SDKAPPID": None}, RuntimeError, "OA_RECALL_SDKAPPID is not set"),
        ({"OA_RECALL_SDKAPPID": []}, RuntimeError, "OA_RECALL_SDKAPPID is not set"),
        ({"OA_RECALL_SDKAPPID": "abc"}, ValueError, "OA_RECALL_SDKAPPID must be an integer"),
        ({"OA_RECALL_SDKAPPID": True}, TypeError, "OA_RECALL_SDKAPPID must be an integer"),
        ({"OA_RECALL_SDKAPPID": 1.5}, TypeError, "OA_RECALL_SDKAPPID must be an integer"),
        ({"OA_RECALL_TOKENS": "secret"}, TypeError, "not a single string"),
        ({"OA_RECALL_TOKENS": [""]}, ValueError, "OA_RECALL_TOKENS holds an empty"),
        ({"OA_RECALL_TOKENS": {9: ["a"]}}, ValueError, "names SdkAppid 9"),
        ({"OA_RECALL_PATH": "hooks"}, ValueError, "OA_RECALL_PATH must start with '/'"),
        ({"OA_RECALL_MAX_BODY_BYTES": 0}, ValueError, "OA_RECALL_MAX_BODY_BYTES"),
        ({"OA_RECALL_MAX_SKEW_SECONDS": -1}, ValueError, "OA_RECALL_MAX_SKEW_SECONDS"),
        ({"OA_RECALL_STORE": 5}, TypeError, "OA_RECALL_STORE"),
        ({"OA_RECALL_DISPATCH": "later"}, ValueError, "OA_RECALL_DISPATCH"),
        ({"OA_RECALL_SLOW_DISPATCH_SHARE": "x"}, ValueError, "OA_RECALL_SLOW_DISPATCH_SHARE"),
        ({"OA_RECALL_LEASE_SECONDS": 0}, ValueError, "OA_RECALL_LEASE_SECONDS"),
    ],
    ids=[
        "no-app-id",
        "empty-app-id-list",
        "app-id-letters",
        "app-id-bool",
        "app-id-float",
        "tokens-string",
        "token-empty",
        "tokens-foreign-app",
        "path-relative",
        "body-zero",
        "skew-negative",
        "store-number",
        "dispatch-unknown",
        "share-string",
        "lease-zero",
    ],
)
def test_bad_config_names_the_key(
    config: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        settings(**config)


def test_secret_is_not_in_the_error_message() -> None:
    with pytest.raises(TypeError) as caught:
        settings(OA_RECALL_TOKENS="very-secret")
    assert "very-secret" not in str(caught.value)


def test_cache_reparses_only_when_config_changes() -> None:
    cache = SettingsCache()
    config: dict[str, Any] = {"OA_RECALL_SDKAPPID": 1, "OA_RECALL_TOKENS": ["a"]}
    first = cache.get(config)
    assert cache.get(config) is first
    config["OA_RECALL_TOKENS"].append("b")
    second = cache.get(config)
    assert second is not first
    assert second.tokens == {1: ("a", "b")}


def test_an_app_id_without_tokens_in_the_dict_form_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask("host", instance_path=str(tmp_path))
    app.config.update(
        OA_RECALL_SDKAPPID=[1, 2], OA_RECALL_TOKENS={1: ["secret-one"]}, OA_RECALL_STORE="memory://"
    )
    OARecall(app)
    (record,) = [r for r in caplog.records if "not authenticated" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert "SdkAppid 2" in record.getMessage()
    assert "secret-one" not in record.getMessage()


@pytest.mark.parametrize("empty", [(), set(), frozenset()], ids=["tuple", "set", "frozenset"])
def test_an_empty_collection_of_app_ids_fails_at_start_up(empty: object) -> None:
    with pytest.raises(RuntimeError, match="OA_RECALL_SDKAPPID is not set"):
        parse_settings({"OA_RECALL_SDKAPPID": empty})


def test_cache_notices_a_token_appended_inside_the_dict_form() -> None:
    cache = SettingsCache()
    config: dict[str, Any] = {"OA_RECALL_SDKAPPID": 1, "OA_RECALL_TOKENS": {1: ["a"]}}
    cache.get(config)
    config["OA_RECALL_TOKENS"][1].append("b")
    assert cache.get(config).tokens == {1: ("a", "b")}
