"""The operator page in a real headless Chromium, against the example under gunicorn.

A refused request without credentials, then as the operator: the list, a filter, a failed
delivery's page, and a replay that turns it into done; also at a phone's width. Needs Debian's
``chromium`` and ``chromium-driver``; skipped without them, except under CI (``CI=true``).
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.support.wait import WebDriverWait

from tests.browser import (
    RECALLED_FAILING,
    RECALLED_OK,
    SENT,
    browser_missing,
    chromium,
    full_page_screenshot,
    seed_deliveries,
    statuses,
)
from tests.servers import GunicornServer, example_server

pytestmark = pytest.mark.e2e

PASSWORD = "browser-test-password"


@pytest.fixture
def example(tmp_path: Path) -> Iterator[tuple[GunicornServer, Path]]:
    why = browser_missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a browser: {why}")
        pytest.skip(why)
    mirror = tmp_path / "mirror"
    env = {
        "OA_RECALL_STORE": f"sqlite:///{tmp_path}/deliveries.sqlite3",
        "MIRROR_DATABASE": str(mirror / "mirror.sqlite3"),
        "OA_RECALL_ADMIN_PASSWORD": PASSWORD,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    with example_server(tmp_path / "log", env=env, workers=2) as server:
        seed_deliveries(server.base_url, mirror)
        yield server, mirror


def mirrored(server: GunicornServer) -> dict[str, Any]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/messages")
        return {m["msg_key"]: m for m in json.loads(conn.getresponse().read())}
    finally:
        conn.close()


def rows(driver: Any) -> list[dict[str, str]]:
    """The list's rows as {column label: text}."""
    found = []
    for tr in driver.find_elements("css selector", "table.deliveries tbody tr"):
        cells = tr.find_elements("css selector", "td")
        found.append({td.get_attribute("data-label"): td.text for td in cells})
    return found


def fits_the_width(driver: Any) -> bool:
    return bool(
        driver.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )


def test_operator_lists_filters_opens_and_replays_a_failed_delivery(
    example: tuple[GunicornServer, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    server, _ = example
    admin = f"{server.base_url}/oa-recall-admin/"
    shots = tmp_path / "screenshots"
    assert mirrored(server)[RECALLED_FAILING]["recalled_at"] is None

    with chromium() as driver:
        # Without credentials: refused (the browser is asked to sign in), nothing shows.
        driver.get(admin)
        assert statuses(driver, admin) == [401]
        assert "deliveries" not in driver.find_element("tag name", "body").text
        assert RECALLED_OK not in driver.page_source

        driver.execute_cdp_cmd("Network.enable", {})
        token = __import__("base64").b64encode(f"operator:{PASSWORD}".encode()).decode()
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
        )

        # The list: three deliveries, newest first.
        driver.get(admin)
        assert statuses(driver, admin) == [200]
        listed = rows(driver)
        assert [r["Status"] for r in listed] == ["failed", "done", "done"]
        assert [r["Official Account"] for r in listed] == [
            "@TOA#_news",
            "@TOA#_sports",
            "@TOA#_news",
        ]
        assert listed[1]["Command"] == "OfficialAccount.CallbackAfterSendMsg"
        full_page_screenshot(driver, shots / "list.png")

        # A filter, through the form.
        Select(driver.find_element("id", "status")).select_by_value("failed")
        driver.find_element("css selector", "form.filters button").click()
        # click() may return before the submitted form's page has loaded.
        WebDriverWait(driver, 20).until(
            lambda d: (
                "status=failed" in d.current_url
                and "1 matching" in d.find_element("id", "summary").text
            )
        )
        (failed,) = rows(driver)
        assert failed["Status"] == "failed"

        # The failed delivery's page.
        driver.find_element("css selector", "td.id a").click()
        WebDriverWait(driver, 20).until(lambda d: d.find_elements("id", "body"))
        assert driver.find_element("id", "status").text == "failed"
        body = driver.find_element("id", "body").text
        assert json.loads(body)["WithdrawMsgList"] == [{"MsgKey": RECALLED_FAILING}]
        assert '\n  "Official_Account": "@TOA#_news"' in body  # pretty-printed
        page = driver.page_source
        assert "RequestTime" in page
        assert "Sign=" not in page
        assert "change-me" not in page
        assert "unable to open database file" in page  # the last error
        full_page_screenshot(driver, shots / "detail-failed.png")

        # Replay: only the failed receiver runs, and the delivery is done.
        driver.find_element("css selector", "button.replay").click()
        # The click submits a form; the answer page may not be loaded when click() returns.
        WebDriverWait(driver, 20).until(lambda d: d.find_elements("id", "result"))
        banner = driver.find_element("id", "result").text
        assert banner.startswith("Replayed: now done.")
        assert "Attempt 2; ran: messages_recalled:mirror_app.on_recall ok." in banner
        assert driver.find_element("id", "status").text == "done"
        assert not driver.find_elements("css selector", "button.replay")
        full_page_screenshot(driver, shots / "detail-replayed.png")

        # At a phone's width the pages fit without scrolling sideways.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
        driver.refresh()
        assert fits_the_width(driver)
        driver.get(admin)
        assert [r["Status"] for r in rows(driver)] == ["done", "done", "done"]
        assert fits_the_width(driver)
        full_page_screenshot(driver, shots / "list-phone.png")

    assert mirrored(server)[RECALLED_FAILING]["recalled_at"] is not None
    assert mirrored(server)[SENT]["text"] == "Full time: 2-1."
    for name in ("list", "detail-failed", "detail-replayed", "list-phone"):
        assert (shots / f"{name}.png").read_bytes().startswith(b"\x89PNG")
