"""``OARecall`` and ``create_blueprint``: set-up, mistakes, and the public surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask

import flask_oa_recall
from flask_oa_recall import OARecall, create_blueprint
from flask_oa_recall.state import OARecallState
from flask_oa_recall.testing import capture_recalls, recall_body, signed_query

from .conftest import SDK_APP_ID, TOKEN


def new_app(tmp_path: Path, **config: object) -> Flask:
    app = Flask("host", instance_path=str(tmp_path / "instance"))
    app.config.update(OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_TOKENS=[TOKEN], **config)
    return app


def test_init_app_mounts_the_route_and_keeps_state(tmp_path: Path) -> None:
    app = new_app(tmp_path)
    ext = OARecall()
    ext.init_app(app)
    assert isinstance(app.extensions["oa_recall"], OARecallState)
    rules = {r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("oa_recall.")}
    assert "/tencent-im/callback" in rules
    assert not hasattr(ext, "app")


def test_defaults_are_set_with_setdefault(tmp_path: Path) -> None:
    app = new_app(tmp_path, OA_RECALL_MAX_SKEW_SECONDS=30)
    OARecall(app)
    assert app.config["OA_RECALL_MAX_SKEW_SECONDS"] == 30
    assert app.config["OA_RECALL_PATH"] == "/tencent-im/callback"
    assert app.config["OA_RECALL_STORE"] is None


def test_default_store_is_sqlite_in_the_instance_folder(tmp_path: Path) -> None:
    app = new_app(tmp_path)
    OARecall(app)
    with capture_recalls(app) as events:
        response = app.test_client().post(
            f"/tencent-im/callback?{signed_query(app)}", data=json.dumps(recall_body())
        )
    assert response.status_code == 200
    assert len(events) == 1
    assert (tmp_path / "instance" / "oa_recall.sqlite3").exists()


def test_registering_twice_is_a_clear_error(tmp_path: Path) -> None:
    app = new_app(tmp_path)
    OARecall(app)
    with pytest.raises(RuntimeError, match="already registered"):
        OARecall(app)


def test_missing_sdk_app_id_fails_at_start_up(tmp_path: Path) -> None:
    app = Flask("host", instance_path=str(tmp_path))
    with pytest.raises(RuntimeError, match="OA_RECALL_SDKAPPID"):
        OARecall(app)


def test_unknown_store_fails_at_start_up(tmp_path: Path) -> None:
    app = new_app(tmp_path, OA_RECALL_STORE="mongodb://x")
    with pytest.raises(ValueError, match="OA_RECALL_STORE"):
        OARecall(app)


def test_custom_path(tmp_path: Path) -> None:
    app = new_app(tmp_path, OA_RECALL_PATH="/hooks/im", OA_RECALL_STORE="memory://")
    OARecall(app)
    response = app.test_client().post(
        f"/hooks/im?{signed_query(app)}", data=json.dumps(recall_body())
    )
    assert response.status_code == 200


def test_create_blueprint_mounted_by_the_host(tmp_path: Path) -> None:
    app = new_app(tmp_path, OA_RECALL_STORE="memory://")
    app.register_blueprint(create_blueprint(), url_prefix="/hooks/tencent")
    assert isinstance(app.extensions["oa_recall"], OARecallState)
    with capture_recalls(app) as events:
        response = app.test_client().post(
            f"/hooks/tencent?{signed_query(app)}", data=json.dumps(recall_body())
        )
    assert response.status_code == 200
    assert len(events) == 1


def test_create_blueprint_and_oarecall_together_is_refused(tmp_path: Path) -> None:
    app = new_app(tmp_path, OA_RECALL_STORE="memory://")
    app.register_blueprint(create_blueprint(), url_prefix="/hooks/tencent")
    with pytest.raises(RuntimeError, match="already registered"):
        OARecall(app)


def test_one_extension_object_serves_two_apps(tmp_path: Path) -> None:
    ext = OARecall()
    first = new_app(tmp_path / "a", OA_RECALL_STORE="memory://")
    second = new_app(tmp_path / "b", OA_RECALL_STORE="memory://")
    ext.init_app(first)
    ext.init_app(second)
    assert first.extensions["oa_recall"] is not second.extensions["oa_recall"]


def test_cli_group_is_registered(tmp_path: Path) -> None:
    app = new_app(tmp_path)
    OARecall(app)
    assert "oa-recall" in app.cli.commands


def test_get_state_without_set_up_is_a_clear_error(tmp_path: Path) -> None:
    from flask_oa_recall.state import get_state

    with pytest.raises(RuntimeError, match="not set up"):
        get_state(Flask("bare"))


def test_dunder_all_is_complete() -> None:
    public = {
        name
        for name in dir(flask_oa_recall)
        if not name.startswith("_") and name not in {"annotations"}
    }
    modules = {name for name in public if type(getattr(flask_oa_recall, name)).__name__ == "module"}
    assert set(flask_oa_recall.__all__) == public - modules
    assert len(flask_oa_recall.__all__) == len(set(flask_oa_recall.__all__))
