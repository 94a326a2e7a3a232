"""A real browser on the app: Playwright drives Debian's chromium (headless) through Image-to-Video.

Saves ``test-artifacts/app.png`` (the README's picture, of the small model, is taken by test_browser_small.py).
Skips, saying why, where ``/usr/bin/chromium`` is not installed (``apt-get install chromium``).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import app as app_module
from pusa_core.engine import Engine
from pusa_core.tiny_models import random_tiny_components
from tests.support.browser import CHROMIUM, TIMEOUT_MS, browser_page
from ui.blocks import build_app

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is not installed (Debian: apt-get install chromium); the browser test needs it", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (requirements-dev.txt) is not installed")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    output_dir = tmp_path_factory.mktemp("outputs")
    engine = Engine.from_components(random_tiny_components(), output_dir=output_dir)
    engine.start()
    notice = app_module.random_model_notice("Started by the browser test with an untrained tiny model.")
    demo = build_app(engine, notice)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_module.launch(demo, app_module.parse_args(["--host", "127.0.0.1", "--port", str(port), "--output-dir", str(output_dir)]), block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(app_url: str) -> Iterator[object]:
    with browser_page(sync_api, app_url) as page:
        yield page


def test_image_to_video_in_a_browser(page) -> None:
    expect = sync_api.expect
    expect(page.locator("#engine-status")).to_contain_text("Ready", timeout=TIMEOUT_MS)
    expect(page.locator("#engine-status")).to_contain_text("random tiny model (untrained, for tests)")
    page.locator("#about").get_by_text("About random tiny model").click()
    expect(page.locator("#model-notice")).to_contain_text("random, untrained tiny model")

    page.locator("#i2v-image input[type=file]").set_input_files(str(ROOT / "examples" / "sunset.png"))
    expect(page.locator("#i2v-image img")).to_be_visible()
    page.get_by_label("Prompt").first.fill("the sun sets slowly over the sea")
    page.locator("#i2v-generate").click()

    video = page.locator("#i2v-video video")
    expect(video).to_have_attribute("src", re.compile(r"\.mp4$"))
    expect(page.locator("#i2v-message")).to_contain_text("Done in")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_the_schedule_picture_follows_typed_positions(page) -> None:
    expect = sync_api.expect
    page.get_by_role("tab", name="Multi-Frames").click()
    schedule = page.locator("#multiframe-schedule")
    expect(schedule).to_contain_text("frames 5–8")  # the default start/end plan of the 9-frame tiny model: 0,2
    page.locator("#multiframe-positions textarea").fill("0,1")
    expect(schedule).to_contain_text("frames 1–4")
    page.locator("#multiframe-positions textarea").fill("0,9")
    expect(schedule).to_contain_text("positions: 9 is out of range")


def test_the_preview_shows_the_video_forming_and_hides_after(page) -> None:
    expect = sync_api.expect
    page.get_by_role("tab", name="Text-to-Video").click()
    page.locator("#t2v-prompt textarea").fill("a red ball bounces")
    # Enough steps that the page's half-second timer sees the job at work.
    steps = page.locator("#t2v-steps input[type=number]")
    steps.fill("100")
    steps.press("Enter")
    page.locator("#t2v-generate").click()
    preview = page.locator("#t2v-preview img")
    expect(preview).to_have_attribute("src", re.compile(r".+"), timeout=TIMEOUT_MS)
    expect(page.locator("#t2v-message")).to_contain_text("Done in", timeout=TIMEOUT_MS)
    expect(page.locator("#t2v-preview")).to_be_hidden()
