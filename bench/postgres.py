"""The PostgreSQL set-ups' store: the ``test`` database at 127.0.0.1:5432, in a schema of this
run's own, dropped at the end. Nothing outside that schema is touched."""

from __future__ import annotations

import importlib.util
import os
import secrets

BASE_URL = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = f"oa_recall_bench_{secrets.token_hex(4)}"
URL = f"{BASE_URL}?schema={SCHEMA}"


def unavailable() -> str | None:
    """Why the PostgreSQL set-ups cannot run, or ``None``."""
    for module in ("psycopg", "psycopg_pool"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[postgres]')"
    import psycopg

    try:
        with psycopg.connect(BASE_URL, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except Exception as err:
        return f"PostgreSQL does not answer at {BASE_URL}: {err}"
    return None


def drop_schema() -> None:
    """Drop this run's schema and the tables in it."""
    import psycopg

    with psycopg.connect(BASE_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
