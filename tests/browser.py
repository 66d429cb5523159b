"""A real headless Chromium for end-to-end tests and the docs' screenshots.

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them), driven by
Selenium through ``/usr/bin/chromedriver``: nothing is downloaded, and the browser has a fresh
profile and no background networking.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "browser_missing",
    "chromium",
    "full_page_screenshot",
    "seed_deliveries",
    "statuses",
]

CHROMIUM = os.environ.get("OA_RECALL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("OA_RECALL_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def browser_missing() -> str | None:
    """``None`` if Chromium, its driver and Selenium are here, else what is missing."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the test extra)"
    return None


@contextmanager
def chromium(
    *, width: int = 1280, height: int = 900, mobile: bool = False, basic_auth: str | None = None
) -> Iterator[Any]:
    """A Selenium ``WebDriver`` for a fresh headless Chromium.

    :param mobile: emulate a phone (device scale 2, touch, a phone's user agent) at
        ``width`` x ``height`` CSS pixels.
    :param basic_auth: ``"user:password"`` sent as HTTP Basic credentials with every request.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    profile = tempfile.mkdtemp(prefix="oa-recall-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    if mobile:
        options.add_experimental_option(
            "mobileEmulation",
            {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0}},
        )
    else:
        options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(20)
        if basic_auth is not None:
            token = base64.b64encode(basic_auth.encode()).decode()
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd(
                "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
            )
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def full_page_screenshot(driver: Any, path: Path) -> None:
    """Save the whole page (not only the window) as a PNG at ``path``."""
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


#: The example's seeded messages, and one the example mirrors from a CallbackAfterSendMsg.
RECALLED_OK = "72_1_1698741760"
RECALLED_FAILING = "73_1_1698741822"
SENT = "81_1_1698742100"


def seed_deliveries(base_url: str, mirror_dir: Path) -> None:
    """Give the example (token ``change-me``) three deliveries: a recall and a sent message
    that are done, and a recall whose receiver failed because the mirror's folder was gone.
    """
    from flask_oa_recall.testing import after_send_msg_body

    from .servers import CallbackClient

    with CallbackClient(base_url, sdk_app_id=1400000000, token="change-me") as client:
        assert client.recall([RECALLED_OK], official_account="@TOA#_news")[0] == 200
        sent = after_send_msg_body(SENT, official_account="@TOA#_sports", text="Full time: 2-1.")
        assert client.post(sent)[0] == 200
        away = mirror_dir.with_name(mirror_dir.name + ".away")
        mirror_dir.rename(away)  # the mirror's disk is gone: its receiver fails
        try:
            assert client.recall([RECALLED_FAILING], official_account="@TOA#_news")[0] == 200
        finally:
            away.rename(mirror_dir)


def statuses(driver: Any, url: str) -> list[int]:
    """The HTTP statuses the browser received for ``url`` since the last call (from its
    network log): what a page showed cannot tell a refused request from an empty one."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            if response["url"] == url:
                found.append(int(response["status"]))
    return found
