"""History and batches in a real browser: a video made before a restart is listed, plays and loads its
settings after it; a 3-seed batch makes 3 videos with consecutive seeds, all listed. Refreshes
``docs/history.png`` (the README's picture of the History panel).

Skips, saying why, where ``/usr/bin/chromium`` is not installed (``apt-get install chromium``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pusa_core.engine import Engine
from pusa_core.tiny_models import random_tiny_components
from tests.support.browser import CHROMIUM, TIMEOUT_MS, browser_page
from tests.support.server import serve

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is not installed (Debian: apt-get install chromium); the browser test needs it", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (requirements-dev.txt) is not installed")
PROMPT = "a red ball rolls before the restart"
DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A ready random tiny model writing to ``tmp_path``."""
    engine = Engine.from_components(random_tiny_components(), output_dir=tmp_path)
    engine.start()
    assert engine.wait_ready(120).state == "ready"
    return engine


def open_history(page) -> None:
    page.locator("#history").get_by_text("History: every video in the output folder").click()


def captions(page) -> list[str]:
    return page.locator("#history-gallery .caption-label").all_inner_texts()


def test_history_lists_a_video_after_a_restart_and_clicking_it_plays_it_and_loads_its_settings(engine: Engine, tmp_path: Path) -> None:
    expect = sync_api.expect
    demo, url = serve(engine, tmp_path)
    try:
        with browser_page(sync_api, url) as page:
            page.get_by_role("tab", name="Text-to-Video").click()
            page.locator("#t2v-prompt textarea").fill(PROMPT)
            page.locator("#t2v-generate").click()
            expect(page.locator("#t2v-message")).to_contain_text("Done in")
            name = re.search(r"Saved as (\S+\.mp4)", page.locator("#t2v-message").inner_text()).group(1)
    finally:
        demo.close()

    demo, url = serve(engine, tmp_path)  # a new server on the same output folder
    try:
        with browser_page(sync_api, url) as page:
            expect(page.locator("#engine-status")).to_contain_text("Ready")
            open_history(page)
            expect(page.locator("#history-page")).to_contain_text("Page 1 of 1 · 1 video")
            assert len(captions(page)) == 1 and "Text-to-Video · seed" in captions(page)[0] and PROMPT[:20] in captions(page)[0]
            expect(page.locator("#history-gallery img")).to_have_count(1)
            assert (tmp_path / "thumbs" / f"{Path(name).stem}.jpg").is_file()
            page.get_by_role("tab", name="Image-to-Video").click()
            page.locator("#history-gallery img").first.click()
            expect(page.locator("#history-video video")).to_have_attribute("src", re.compile(re.escape(Path(name).stem) + r".*\.mp4$"))
            expect(page.locator("#history-details")).to_contain_text(name)
            expect(page.locator("#history-message")).to_contain_text(f"Loaded the settings of {Path(name).with_suffix('.json').name} into Text-to-Video")
            expect(page.locator("#t2v-prompt textarea")).to_have_value(PROMPT)  # its tab is shown and filled
            expect(page.locator("#t2v-prompt textarea")).to_be_visible()
            DOCS.mkdir(exist_ok=True)
            page.locator("#history").screenshot(path=str(DOCS / "history.png"))  # the README's picture of the panel
            # The chosen video has a result's buttons: Continue fills Video-to-Video with its last frames.
            page.locator("#history-continue").click()
            expect(page.locator("#v2v-continuing")).to_contain_text(f"Continuing {name}: its last")
            expect(page.locator("#v2v-frames-from input[value=last]")).to_be_checked()
            expect(page.locator("#v2v-prompt textarea")).to_have_value(PROMPT)
    finally:
        demo.close()


def test_a_three_seed_batch_makes_three_videos_all_listed(engine: Engine, tmp_path: Path) -> None:
    expect = sync_api.expect
    demo, url = serve(engine, tmp_path)
    try:
        with browser_page(sync_api, url) as page:
            expect(page.locator("#engine-status")).to_contain_text("Ready")
            page.get_by_role("tab", name="Text-to-Video").click()
            page.locator("#t2v-prompt textarea").fill("a red ball in a batch")
            page.locator("#t2v-batch").get_by_text("Batch: several videos per click").click()
            count = page.locator("#t2v-batch-count input[type=number]")
            count.fill("3")
            count.press("Enter")
            page.locator("#t2v-batch-queue").click()
            expect(page.locator("#queue-message")).to_contain_text("Queued 3 Text-to-Video jobs")
            seeds = [int(s) for s in re.search(r"seeds ([\d, ]+)\)", page.locator("#queue-message").inner_text()).group(1).split(", ")]
            assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
            expect(page.locator("#t2v-message")).to_contain_text("Batch job 3 of 3: Done in", timeout=TIMEOUT_MS)
            table = page.locator("#queue-table")
            for state in ("queued", "running"):
                expect(table).not_to_contain_text(state)
            done = set(re.findall(r"done: (\S+?\.mp4)", table.inner_text()))
            assert len(done) == 3 and done == {p.name for p in tmp_path.glob("t2v_*.mp4")}
            open_history(page)
            expect(page.locator("#history-page")).to_contain_text("3 videos")
            listed = captions(page)
            assert sorted(int(re.search(r"seed (\d+)", c).group(1)) for c in listed) == seeds
    finally:
        demo.close()
    assert sorted(int(re.search(r"seed(\d+)", p.name).group(1)) for p in tmp_path.glob("t2v_*.mp4")) == seeds
