"""Debian's chromium driven headless by Playwright, as the browser tests use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
]
TIMEOUT_MS = 120_000
TABS = {"i2v": "Image-to-Video", "multiframe": "Multi-Frames", "v2v": "Video-to-Video", "t2v": "Text-to-Video"}


@contextmanager
def browser_page(sync_api: Any, url: str) -> Iterator[Any]:
    """A 1280x1000 page on ``url`` with the tests' timeout, closed afterwards."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            yield page
        finally:
            browser.close()
