"""Store URLs are shown without their password."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from flask_oa_recall import OARecall
from flask_oa_recall.store.url import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis://:s3cret@h/0", "redis://:***@h/0"),
        ("redis://h/0?password=s3cret&prefix=x", "redis://h/0?password=***&prefix=x"),
        ("redis://h/0?prefix=x", "redis://h/0?prefix=x"),
        ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
    ],
    ids=["user-password", "password-only", "query-password", "no-password", "sqlite"],
)
def test_password_is_replaced(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_check_never_prints_the_store_password(tmp_path: Path) -> None:
    app = Flask("host", instance_path=str(tmp_path))
    app.config.update(
        OA_RECALL_SDKAPPID=1,
        OA_RECALL_TOKENS=["t"],
        OA_RECALL_STORE="redis://user:s3cret@127.0.0.1:1/0?password=s3cret",
    )
    OARecall(app)
    result = app.test_cli_runner().invoke(args=["oa-recall", "check"])
    assert result.exit_code == 1
    assert "FAIL  store" in result.output
    assert "redis://user:***@127.0.0.1:1/0?password=***" in result.output
    assert "s3cret" not in result.output
