"""Regenerate the operator page's screenshots in ``docs/_static/screenshots/``.

Run from the project's root, with the ``test`` extra installed and Debian's ``chromium`` and
``chromium-driver``::

    python -m docs.screenshots

It serves the example under gunicorn on 127.0.0.1 (a port the kernel picks, files in a
temporary folder), gives it three deliveries, one of them failed, and photographs the list, the
failed delivery, the same delivery after a replay, and the list at a phone's width.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.browser import browser_missing, chromium, full_page_screenshot, seed_deliveries
from tests.servers import PROJECT_ROOT, example_server

OUT = PROJECT_ROOT / "docs" / "_static" / "screenshots"
USER, PASSWORD = "operator", "screenshots"


def main() -> int:
    """Take the screenshots; return the exit status."""
    why = browser_missing()
    if why is not None:
        print(f"cannot take screenshots: {why}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="oa-recall-screenshots-") as folder:
        tmp = Path(folder)
        (tmp / "metrics").mkdir()
        env = {
            "OA_RECALL_STORE": f"sqlite:///{tmp}/deliveries.sqlite3",
            "MIRROR_DATABASE": str(tmp / "mirror" / "mirror.sqlite3"),
            "OA_RECALL_ADMIN_PASSWORD": PASSWORD,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        }
        with example_server(tmp / "log", env=env, workers=1) as server:
            seed_deliveries(server.base_url, tmp / "mirror")
            admin = f"{server.base_url}/oa-recall-admin/"
            with chromium(basic_auth=f"{USER}:{PASSWORD}", width=1100, height=700) as driver:
                driver.get(admin)
                full_page_screenshot(driver, OUT / "list.png")
                driver.get(admin + "?status=failed")
                driver.find_element("css selector", "td.id a").click()
                full_page_screenshot(driver, OUT / "detail-failed.png")
                driver.find_element("css selector", "button.replay").click()
                full_page_screenshot(driver, OUT / "detail-replayed.png")
            with chromium(
                basic_auth=f"{USER}:{PASSWORD}", mobile=True, width=390, height=844
            ) as driver:
                driver.get(admin)
                full_page_screenshot(driver, OUT / "list-phone.png")
    for path in sorted(OUT.glob("*.png")):
        print(f"wrote {path.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
