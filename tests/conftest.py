"""Shared fixtures: apps configured for the extension, and access to the real Redis."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import OARecall

# The package's own plugin is loaded here rather than by its entry point (switched off with
# ``-p no:oa_recall`` in addopts): an entry point is imported before pytest-cov starts, which
# would leave every module-level line of the package unmeasured.
pytest_plugins = ["pytester", "flask_oa_recall.pytest_plugin"]

SDK_APP_ID = 1400000000
TOKEN = "xxxxyyyy"
REDIS_URL = os.environ.get("OA_RECALL_TEST_REDIS", "redis://127.0.0.1:6379/13")
POSTGRES_URL = os.environ.get(
    "OA_RECALL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)

AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Path) -> AppFactory:
    """Build a fresh app with the extension; keyword arguments become ``OA_RECALL_*`` config."""

    def factory(**config: Any) -> Flask:
        app = Flask("host_app", instance_path=str(tmp_path / "instance"))
        app.config.update(
            TESTING=True,
            OA_RECALL_SDKAPPID=SDK_APP_ID,
            OA_RECALL_TOKENS=[TOKEN],
            OA_RECALL_STORE="memory://",
        )
        app.config.update({f"OA_RECALL_{k.upper()}": v for k, v in config.items()})
        OARecall(app)
        return app

    return factory


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """The app pytest-flask's ``client`` fixture uses: signed, in-memory store."""
    return make_app()


def redis_available(url: str = REDIS_URL) -> str | None:
    """``None`` if Redis answers at ``url``, else why not."""
    try:
        import redis
    except ImportError:
        return "the redis client is not installed"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception as err:
        return f"Redis is unreachable at {url}: {err}"
    return None


@pytest.fixture
def redis_url() -> str:
    """A Redis database of this test suite's own (13). Each test uses a key prefix of its own
    and deletes it (see ``tests.servers.redis_prefixed``); nothing here sweeps more widely, since
    another run may be using the same database at the same time.

    Skips when Redis is unreachable, except under CI (``CI=true``), where it fails.
    """
    why = redis_available()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs Redis: {why}")
        pytest.skip(why)
    return REDIS_URL


def postgres_available(url: str = POSTGRES_URL) -> str | None:
    """``None`` if PostgreSQL answers at ``url`` and its client is installed, else why not."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg or psycopg_pool is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except Exception as err:
        return f"PostgreSQL is unreachable at {url}: {err}"
    return None


@pytest.fixture
def postgres_url() -> str:
    """The test database's URL. Each test keeps its tables in a schema of its own and drops
    it (see ``tests.servers.postgres_schema``); nothing here touches any other schema.

    Skips when PostgreSQL is unreachable, except under CI (``CI=true``), where it fails.
    """
    why = postgres_available()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs PostgreSQL: {why}")
        pytest.skip(why)
    return POSTGRES_URL
