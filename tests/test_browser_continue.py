"""A real browser continues a video: generate, press 'Continue this video', Generate on Video-to-Video, and
the joined video served to the page is longer by the new frames. Also 'Use last frame' and 'Use as keyframe'.

Saves ``test-artifacts/continue.png`` and refreshes ``docs/continue.png`` (the README's picture of the flow).
Skips, saying why, where chromium or playwright is missing (see tests/test_browser.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urljoin


from pusa_core.media import video_info
# The browser test's server and page fixtures (a module of its own: one fresh app and browser).
from tests.test_browser import ARTIFACTS, ROOT, TIMEOUT_MS, app_url, page, sync_api  # noqa: F401

OVERLAP = 5  # the random tiny model's 9 frames: continued from the last 5 (positions 0,1)


def served_frames(page, selector: str, tmp_path: Path, name: str) -> int:
    """Frames of the video the page plays at ``selector``, fetched the way the browser fetches it."""
    src = page.locator(f"{selector} video").get_attribute("src")
    response = page.request.get(urljoin(page.url, src))
    assert response.ok, f"{src}: {response.status}"
    path = tmp_path / name
    path.write_bytes(response.body())
    return video_info(path)[0]


def generate_text_to_video(page) -> None:
    expect = sync_api.expect
    expect(page.locator("#engine-status")).to_contain_text("Ready", timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="Text-to-Video").click()
    page.locator("#t2v-prompt textarea").fill("a red ball bounces")
    page.locator("#t2v-generate").click()
    expect(page.locator("#t2v-message")).to_contain_text("Done in", timeout=TIMEOUT_MS)
    expect(page.locator("#t2v-video video")).to_have_attribute("src", re.compile(r"\.mp4$"), timeout=TIMEOUT_MS)


def test_the_result_buttons_wait_for_a_result(page) -> None:
    expect = sync_api.expect
    for action in ("continue", "use-last-frame", "use-keyframe"):  # the tab shown first
        expect(page.locator(f"#i2v-{action}")).to_be_disabled()


def test_continue_a_video_in_a_browser(page, tmp_path: Path) -> None:
    expect = sync_api.expect
    generate_text_to_video(page)
    original = served_frames(page, "#t2v-video", tmp_path, "original.mp4")

    page.locator("#t2v-continue").click()
    expect(page.locator("#v2v-continuing")).to_contain_text("Continuing t2v_", timeout=TIMEOUT_MS)
    expect(page.locator("#v2v-frames-from input[value=last]")).to_be_checked()
    expect(page.locator("#v2v-prompt textarea")).to_have_value("a red ball bounces")
    expect(page.locator("#v2v-schedule")).to_contain_text(f"of its last {OVERLAP}")
    page.locator("#v2v-generate").click()
    expect(page.locator("#v2v-message")).to_contain_text("Done in", timeout=TIMEOUT_MS)
    expect(page.locator("#v2v-continuing")).to_contain_text("Joined: continue_", timeout=TIMEOUT_MS)
    expect(page.locator("#v2v-joined video")).to_have_attribute("src", re.compile(r"\.mp4$"), timeout=TIMEOUT_MS)

    new = served_frames(page, "#v2v-video", tmp_path, "part.mp4")
    joined = served_frames(page, "#v2v-joined", tmp_path, "joined.mp4")
    assert (original, new) == (9, 9)
    assert joined == original + new - OVERLAP  # longer by the new part's own frames
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "continue.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, ROOT / "docs" / "continue.png")

    # Continue again from Video-to-Video: the joined video is what goes on.
    page.locator("#v2v-continue").click()
    expect(page.locator("#v2v-continuing")).to_contain_text("Continuing continue_", timeout=TIMEOUT_MS)
    page.locator("#v2v-generate").click()
    expect(page.locator("#v2v-continuing")).to_contain_text(f"{joined + new - OVERLAP} frames", timeout=TIMEOUT_MS)
    assert served_frames(page, "#v2v-joined", tmp_path, "longer.mp4") == joined + new - OVERLAP


def test_last_frame_to_image_to_video_and_multi_frames(page) -> None:
    expect = sync_api.expect
    generate_text_to_video(page)
    page.locator("#t2v-use-last-frame").click()
    expect(page.locator("#i2v-image img")).to_be_visible()
    page.get_by_role("tab", name="Text-to-Video").click()
    page.locator("#t2v-use-keyframe").click()
    expect(page.get_by_role("cell", name=re.compile(r"^t2v_.*_last\.png$")).first).to_be_visible()
