"""The history of the output folder: order, paging, thumbnails (made once, pruned with their videos), name lookups."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from pusa_core.continuation import write_joined
from pusa_core.errors import PusaInputError
from pusa_core.history import MAX_PER_PAGE, History
from pusa_core.media import write_mp4
from pusa_core.outputs import OutputFolder, Retention
from tests.support.server import SMALL, task_inputs

BASE_TIME = 1_780_000_000


def make_output(root: Path, name: str, age: int, prompt: str = "a red ball", seed: int = 7, colour: int = 40) -> Path:
    """An output as the engine writes it (MP4 + settings JSON), modified ``age`` seconds before BASE_TIME."""
    video = root / name
    frames = np.full((5, 64, 96, 3), colour, np.uint8)
    settings = {"task": name.split("_")[0], "prompt": prompt,
                "settings": {"prompt": prompt, "seed": seed, "num_frames": 5, "fps": 8, "width": 96, "height": 64}}
    write_mp4(frames, video, 8, settings)
    video.with_suffix(".json").write_text(json.dumps(settings))
    for path in (video, video.with_suffix(".json")):
        os.utime(path, (BASE_TIME - age, BASE_TIME - age))
    return video


@pytest.fixture
def folder(tmp_path: Path) -> OutputFolder:
    for i in range(5):  # i=0 is the newest
        make_output(tmp_path, f"t2v_2026010{5 - i}-120000_seed{i}.mp4", age=i * 60, prompt=f"prompt {i}", seed=i)
    return OutputFolder(tmp_path)


def test_entries_are_newest_first_with_what_their_settings_say(folder: OutputFolder) -> None:
    entries = History(folder).entries()
    assert [e.seed for e in entries] == [0, 1, 2, 3, 4]
    first = entries[0].as_json()
    assert first["name"] == "t2v_20260105-120000_seed0.mp4"
    assert {k: first[k] for k in ("task", "prompt", "seed", "frames", "seconds", "fps", "width", "height")} == {
        "task": "t2v", "prompt": "prompt 0", "seed": 0, "frames": 5, "seconds": 0.625, "fps": 8.0, "width": 96, "height": 64,
    }
    assert datetime.fromisoformat(first["created"]).timestamp() == BASE_TIME


def test_videos_without_readable_settings_and_links_are_not_listed(folder: OutputFolder, tmp_path: Path) -> None:
    (folder.root / "stray.mp4").write_bytes(b"not ours")  # no JSON beside it
    broken = make_output(folder.root, "i2v_20260101-000000_seed9.mp4", age=0)
    broken.with_suffix(".json").write_text("{not json")
    outside = make_output(tmp_path.parent / (tmp_path.name + "-elsewhere"), "t2v_20990101-000000_seed1.mp4", age=0)
    (folder.root / "t2v_20990101-000000_seed1.mp4").symlink_to(outside)
    (folder.root / "t2v_20990101-000000_seed1.json").symlink_to(outside.with_suffix(".json"))
    names = [e.name for e in History(folder).entries()]
    assert len(names) == 5 and "stray.mp4" not in names and broken.name not in names
    assert "t2v_20990101-000000_seed1.mp4" not in names


def test_pages_split_the_listing_and_bad_page_numbers_are_refused(folder: OutputFolder) -> None:
    history = History(folder)
    first, second, third = (history.page(n, 2) for n in (1, 2, 3))
    assert [e.seed for e in first.entries] == [0, 1] and [e.seed for e in second.entries] == [2, 3]
    assert [e.seed for e in third.entries] == [4] and (third.total, third.pages) == (5, 3)
    beyond = history.page(4, 2)
    assert beyond.entries == () and beyond.as_json()["total"] == 5
    assert history.page(1.0, 12.0).per_page == 12  # number boxes send floats
    for page, per_page, message in [
        (0, 2, "must be 1 or more, got 0; e.g. 1 for the newest"),
        ("2", 2, "must be a whole number, got '2'"),
        (1, MAX_PER_PAGE + 1, f"must be from 1 to {MAX_PER_PAGE}, got {MAX_PER_PAGE + 1}"),
        (1, 1.5, "must be a whole number, got 1.5"),
    ]:
        with pytest.raises(PusaInputError) as refused:
            history.page(page, per_page)
        assert refused.value.message.startswith(message)
        assert refused.value.field == ("page" if page != 1 else "per_page")


@pytest.mark.parametrize(
    "name, message",
    [
        ("../x", "'../x' is not a bare file name; give a name as /history lists it"),
        ("/etc/passwd", "'/etc/passwd' is not a bare file name"),
        ("sub\\t2v.mp4", "'sub\\\\t2v.mp4' is not a bare file name"),
        (".hidden.mp4", "'.hidden.mp4' is not a bare file name"),
        ("", "is empty; give a video's name as /history lists it"),
        ("t2v_20300101-000000_seed1.mp4", "'t2v_20300101-000000_seed1.mp4' is not in the history"),
        ("inputs", "'inputs' is not in the history"),
        (None, "must be a video's file name as /history lists it, got NoneType"),
    ],
)
def test_names_are_looked_up_in_the_listing_never_joined(folder: OutputFolder, name: object, message: str) -> None:
    with pytest.raises(PusaInputError) as refused:
        History(folder).find(name)
    assert refused.value.field == "name" and refused.value.message.startswith(message)


def test_a_listed_name_finds_its_entry(folder: OutputFolder) -> None:
    entry = History(folder).find("t2v_20260103-120000_seed2.mp4")
    assert entry.video == folder.root / "t2v_20260103-120000_seed2.mp4" and entry.seed == 2


def test_thumbnails_are_made_once_and_pruned_with_their_videos(tmp_path: Path) -> None:
    bright = make_output(tmp_path, "t2v_20260102-000000_seed1.mp4", age=0, colour=200)
    dark = make_output(tmp_path, "t2v_20260101-000000_seed2.mp4", age=3600, colour=30)
    folder = OutputFolder(tmp_path, Retention(keep_newest=1))
    history = History(folder)
    entries = history.entries()
    thumbs = [history.thumbnail(e) for e in entries]
    assert thumbs == [tmp_path / "thumbs" / f"{bright.stem}.jpg", tmp_path / "thumbs" / f"{dark.stem}.jpg"]
    pixels = [np.asarray(Image.open(t)) for t in thumbs]
    assert pixels[0].shape == (64, 96, 3) and abs(pixels[0].mean() - 200) < 8 and abs(pixels[1].mean() - 30) < 8
    made = thumbs[0].stat().st_mtime_ns
    assert history.thumbnail(entries[0]) == thumbs[0] and thumbs[0].stat().st_mtime_ns == made  # kept, not redone
    removed = folder.prune()
    assert thumbs[1] in removed and dark in removed and not thumbs[1].exists()
    assert thumbs[0].exists() and [e.name for e in history.entries()] == [bright.name]


def test_orphan_thumbnails_go_and_a_video_that_will_not_decode_has_none(tmp_path: Path) -> None:
    make_output(tmp_path, "t2v_20260102-000000_seed1.mp4", age=0)
    (tmp_path / "thumbs").mkdir()
    orphan = tmp_path / "thumbs" / "t2v_20200101-000000_seed5.jpg"
    orphan.write_bytes(b"x")
    writing = tmp_path / "thumbs" / ".t2v_20260102-000000_seed1.abc.part"
    writing.write_bytes(b"x")
    assert OutputFolder(tmp_path, Retention(keep_newest=5)).prune() == [orphan]
    assert writing.exists()
    broken = make_output(tmp_path, "i2v_20260103-000000_seed3.mp4", age=0)
    broken.write_bytes(b"not a video")
    history = History(OutputFolder(tmp_path))
    assert history.thumbnail(history.find(broken.name)) is None


def test_history_through_gradio_client_pages_newest_first_and_refuses_bad_pages(server) -> None:
    seeds = []
    for seed in (101, 102):
        _, _, used, _ = server.client.predict(**task_inputs("t2v"), **SMALL, seed=seed, randomize_seed=False, api_name="/t2v")
        seeds.append(used)
    listed = server.client.predict(page=1, per_page=1, api_name="/history")
    assert (listed["page"], listed["per_page"]) == (1, 1) and listed["total"] >= 2 and listed["pages"] == listed["total"]
    newest = listed["entries"][0]
    assert newest["seed"] == 102 and newest["task"] == "t2v" and newest["prompt"] == task_inputs("t2v")["prompt"]
    assert (newest["frames"], newest["seconds"]) == (9, 9 / newest["fps"])
    assert (server.output_dir / newest["name"]).is_file()
    assert server.client.predict(page=2, per_page=1, api_name="/history")["entries"][0]["seed"] == 101
    named = server.client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/history" in named and {"/i2v", "/multiframe", "/v2v", "/t2v", "/cancel"} <= set(named)
    assert not [name for name in named if "batch" in name or "queue" in name]  # batches are the page's own
    for page, per_page, message in [(0, 12, "page must be 1 or more, got 0"), (1, 49, "per_page must be from 1 to 48, got 49")]:
        with pytest.raises(AppError) as refused:
            server.client.predict(page=page, per_page=per_page, api_name="/history")
        assert str(refused.value).startswith(message)


def test_a_joined_continuation_is_listed_with_its_joined_length(tmp_path: Path) -> None:
    outputs = OutputFolder(tmp_path)
    original = make_output(tmp_path, "t2v_20260101-120000_seed1.mp4", age=120)
    part = make_output(tmp_path, "v2v_20260101-120100_seed2.mp4", age=60)
    part_settings = json.loads(part.with_suffix(".json").read_text())
    part_settings.update(task="v2v", frames_from="last", positions=[0], multipliers=[0.0])
    joined = write_joined(outputs, original, part, part_settings)
    entry = History(outputs).find(joined.video_path.name)
    assert joined.num_frames == 5 + 5 - 1  # slot 0 is one pixel frame, repeated once
    assert entry.frames == 9 and entry.seconds == 9 / 8
