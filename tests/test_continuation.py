"""Continuing a video: the conditioning plan, the join, fps resampling, first/last frames, on a tiny engine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from pusa_core.continuation import (
    CONTINUE_MULTIPLIERS,
    check_continuation,
    find_output,
    join_frames,
    last_frame,
    plan_continuation,
    write_joined,
)
from pusa_core.errors import PusaInputError
from pusa_core.generate import request_from
from pusa_core.media import read_settings, read_video, resampled_count, resampled_index, video_info, write_mp4
from pusa_core.outputs import OutputFolder, sha256_file
from pusa_core.requests import Settings, TextToVideo, VideoToVideo
from tests.support.server import SMALL, task_inputs


def numbered_clip(count: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Flat frames whose brightness steps by 6 a frame, so a frame's index can be read back through H.264."""
    w, h = size
    return np.stack([np.full((h, w, 3), 10 + 6 * i, np.uint8) for i in range(count)])


def frame_levels(frames: np.ndarray) -> list[int]:
    return [round((float(f.mean()) - 10) / 6) for f in frames]


# -- the plan ---------------------------------------------------------------------------------------
def test_an_81_frame_video_is_continued_from_its_last_13_frames_at_slots_0_to_3() -> None:
    plan = plan_continuation(81, 81)
    assert plan.positions == (0, 1, 2, 3)
    assert plan.multipliers == CONTINUE_MULTIPLIERS == (0.0, 0.3, 0.4, 0.5)
    assert plan.overlap == 13
    assert plan.joined_frames(81, 81) == 149


@pytest.mark.parametrize(
    ("original", "new", "positions", "overlap"),
    [
        (9, 9, (0, 1), 5),  # the new part keeps its last slot (9 frames = slots 0..2)
        (9, 17, (0, 1, 2), 9),  # the original has only 3 slots' frames
        (5, 81, (0, 1), 5),
        (1, 81, (0,), 1),
        (13, 81, (0, 1, 2, 3), 13),
    ],
)
def test_short_videos_take_fewer_slots(original: int, new: int, positions: tuple[int, ...], overlap: int) -> None:
    plan = plan_continuation(original, new)
    assert (plan.positions, plan.overlap) == (positions, overlap)
    assert plan.multipliers == CONTINUE_MULTIPLIERS[: len(positions)]


def test_a_one_frame_continuation_is_refused() -> None:
    with pytest.raises(PusaInputError, match="nothing to add"):
        plan_continuation(81, 1)


def test_a_continuation_must_take_the_last_frames_and_add_some() -> None:
    assert check_continuation("last", (0, 1, 2, 3), 81) == 13
    with pytest.raises(PusaInputError, match="frames_from: is 'first'; a continuation takes the video's last frames"):
        check_continuation("first", (0, 1), 81)
    with pytest.raises(PusaInputError, match="positions: cover all 9 frames of the new part"):
        check_continuation("last", (0, 1, 2), 9)


def test_join_drops_the_repeated_frames_from_the_new_part() -> None:
    original, new = numbered_clip(9), numbered_clip(9)[::-1].copy()
    joined = join_frames(original, new, 5)
    assert len(joined) == 9 + 9 - 5
    assert frame_levels(joined) == list(range(9)) + [3, 2, 1, 0]
    with pytest.raises(ValueError, match="differ in size"):
        join_frames(original, numbered_clip(9, (32, 64)), 5)
    with pytest.raises(ValueError, match="outside"):
        join_frames(original, new, 10)


# -- resampling and the end of a video --------------------------------------------------------------
def test_resampling_keeps_the_duration() -> None:
    assert [resampled_index(i, 30, 16) for i in range(5)] == [0, 1, 3, 5, 7]
    assert resampled_count(31, 30, 16) == 17  # 1.03 s
    assert resampled_count(9, 8, 16) == 18  # slower source: frames are held twice
    assert resampled_count(90, 30, 30) == 90


def test_read_video_resamples_and_takes_the_last_frames(tmp_path: Path) -> None:
    clip = write_mp4(numbered_clip(20), tmp_path / "thirty.mp4", 30)
    frames, source_fps = read_video(clip, fps=15)
    assert source_fps == pytest.approx(30)
    assert frame_levels(frames) == list(range(0, 20, 2))
    last, _ = read_video(clip, max_frames=3, fps=15, last=True)
    assert frame_levels(last) == [14, 16, 18]
    first, _ = read_video(clip, max_frames=3)
    assert frame_levels(first) == [0, 1, 2]
    assert frame_levels(last_frame(clip)[None]) == [19]


# -- the output folder ------------------------------------------------------------------------------
def test_outputs_are_found_by_bare_name_only(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "outputs")
    video = write_mp4(numbered_clip(1), folder.root / "i2v_1_seed1.mp4", 8)
    (tmp_path / "secret.mp4").write_bytes(video.read_bytes())
    (folder.root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    assert find_output(folder, "i2v_1_seed1.mp4") == video
    for bad, says in [
        ("../secret.mp4", "is not a bare file name"),
        (str(video), "is not a bare file name"),
        ("sub\\x.mp4", "is not a bare file name"),
        ("..", "is not a bare file name"),
        ("missing.mp4", "is not a video in the output folder"),
        ("link.mp4", "is not a video in the output folder"),
        ("i2v_1_seed1.json", "is not a video in the output folder"),
        ("", "is empty"),
        (None, "is empty"),
    ]:
        with pytest.raises(PusaInputError, match=says) as caught:
            find_output(folder, bad)
        assert caught.value.field == "output"


def test_write_joined_streams_both_parts_and_records_them_by_hash(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "outputs")
    original = write_mp4(numbered_clip(20), tmp_path / "phone.mp4", 16)
    part = write_mp4(numbered_clip(9)[::-1].copy(), folder.root / "v2v_1_seed3.mp4", 16)
    settings = {"task": "v2v", "positions": [0, 1], "multipliers": [0.0, 0.3], "frames_from": "last",
                "settings": {"width": 64, "height": 64, "fit": "crop", "fps": 16, "seed": 3, "num_frames": 9}}
    joined = write_joined(folder, original, part, settings)
    assert (joined.num_frames, joined.original_frames, joined.new_frames, joined.overlap) == (24, 20, 9, 5)
    assert video_info(joined.video_path) == (24, 64, 64)
    assert joined.video_path.name.startswith("continue_") and "seed3" in joined.video_path.name
    levels = frame_levels(read_video(joined.video_path)[0])
    assert levels == list(range(20)) + [3, 2, 1, 0]
    saved = json.loads(joined.settings_path.read_text())
    assert saved["joined"] == {
        "original": {"name": "phone.mp4", "sha256": sha256_file(original)},
        "continuation": {"name": part.name, "sha256": sha256_file(part)},
        "overlap_frames": 5, "original_frames": 20, "new_frames": 9, "frames": 24,
    }
    assert str(tmp_path) not in joined.settings_path.read_text()
    assert read_settings(joined.video_path)["joined"]["continuation"]["name"] == part.name


# -- the engine -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def settings(tiny_engine) -> Settings:
    return replace(tiny_engine.defaults(), prompt="a red circle moves right", seed=5)


def test_the_engine_continues_a_video_and_joins_it(tiny_engine, settings) -> None:
    first = tiny_engine.generate(TextToVideo(settings))
    plan = plan_continuation(first.num_frames, settings.num_frames)
    request = VideoToVideo(settings, video=str(first.video_path), positions=plan.positions,
                           multipliers=plan.multipliers, frames_from="last")
    result = tiny_engine.continue_video(request)
    assert result.part.num_frames == settings.num_frames == 9
    assert result.joined.num_frames == plan.joined_frames(9, 9) == 9 + 9 - 5
    assert video_info(result.joined.video_path) == (13, settings.width, settings.height)
    assert result.part.settings["frames_from"] == "last"
    # The joined video is the original, then the new part from its first new frame on.
    original, _ = read_video(first.video_path)
    part, _ = read_video(result.part.video_path)
    joined, _ = read_video(result.joined.video_path)
    assert np.abs(joined.astype(int) - np.concatenate([original, part[5:]]).astype(int)).mean() < 4
    # Chained: the joined video continues again, and grows by the new frames once more.
    again = tiny_engine.continue_video(replace(request, video=str(result.joined.video_path)))
    assert video_info(again.joined.video_path)[0] == 13 + 9 - 5


def test_the_engine_refuses_a_continuation_from_the_first_frames(tiny_engine, settings, tmp_path) -> None:
    clip = write_mp4(numbered_clip(9), tmp_path / "clip.mp4", settings.fps)
    with pytest.raises(PusaInputError, match="frames_from"):
        tiny_engine.continue_video(VideoToVideo(settings, video=str(clip), positions=(0, 1), multipliers=(0.0, 0.3)))
    with pytest.raises(PusaInputError, match="frames_from: must be one of 'first', 'last', got 'middle'"):
        tiny_engine.generate(VideoToVideo(settings, video=str(clip), positions=(0,), multipliers=(0.0,), frames_from="middle"))


def test_v2v_takes_first_or_last_frames_and_resamples_a_faster_clip(tiny_engine, settings, tmp_path) -> None:
    """Every slot kept at multiplier 0: the output is the VAE round trip of exactly the frames taken."""
    # Blocky random frames: each one unlike the others, and close to itself through H.264.
    blocks = np.random.default_rng(3).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    source = blocks.repeat(8, axis=1).repeat(8, axis=2)
    fast = write_mp4(source, tmp_path / "fast.mp4", settings.fps * 4)  # read at the job's fps: every 4th frame

    def kept(video: Path, frames_from: str):
        request = VideoToVideo(settings, video=str(video), positions=(0, 1, 2), multipliers=(0.0, 0.0, 0.0),
                               frames_from=frames_from)
        result = tiny_engine.generate(request)
        return read_video(result.video_path)[0].astype(int), result.notes

    first, notes = kept(fast, "first")
    assert f"Input was {settings.fps * 4} fps, resampled to {settings.fps} fps" in notes
    last, _ = kept(fast, "last")
    every_4th = source[::4]  # 10 frames
    expected_first, same_rate = kept(write_mp4(every_4th[:9], tmp_path / "first.mp4", settings.fps), "first")
    expected_last, _ = kept(write_mp4(every_4th[-9:], tmp_path / "last.mp4", settings.fps), "first")
    assert not any("resampled" in note for note in same_rate)

    def dist(a, b):
        return np.abs(a - b).mean()

    assert dist(first, expected_first) < dist(first, expected_last) / 3
    assert dist(last, expected_last) < dist(last, expected_first) / 3


# -- through the served app -------------------------------------------------------------------------
def test_continue_api_by_output_name_chains_and_joins(server) -> None:
    video, _, _, _ = server.client.predict(**task_inputs("t2v"), **SMALL, seed=7, randomize_seed=False, api_name="/t2v")
    name = Path(video).name
    joined, part, settings_file, seed, message = server.client.predict(
        output=name, prompt="a red ball bounces on", **SMALL, seed=8, randomize_seed=False, api_name="/continue"
    )
    assert seed == 8 and Path(part).name.startswith("v2v_") and Path(joined).name.startswith("continue_")
    assert video_info(part) == (9, 96, 64)
    assert video_info(joined) == (9 + 9 - 5, 96, 64)
    saved = json.loads(Path(settings_file).read_text())
    assert saved["frames_from"] == "last" and saved["positions"] == [0, 1] and saved["multipliers"] == [0.0, 0.3]
    assert saved["joined"]["original"]["name"] == name and saved["joined"]["continuation"]["name"] == Path(part).name
    assert saved["joined"]["frames"] == 13 and "Joined:" in message and "13 frames" in message
    assert (server.output_dir / Path(joined).name).is_file()
    # Minutes of video are this, repeated: each call adds the new part's frames less the overlap.
    longer, *_ = server.client.predict(output=Path(joined).name, prompt="a red ball bounces on", **SMALL, api_name="/continue")
    assert video_info(longer)[0] == 13 + 9 - 5


def test_continue_api_takes_an_upload_at_another_fps(server, tmp_path) -> None:
    clip = write_mp4(numbered_clip(30, (96, 64)), tmp_path / "phone.mp4", 30)  # 1 s at 30 fps
    joined, part, _, _, message = server.client.predict(
        video=handle_file(clip), prompt="a blue square moves", **SMALL, fps=8, api_name="/continue"
    )
    assert "Input was 30 fps, resampled to 8 fps" in message
    assert video_info(joined)[0] == 8 + 9 - 5  # the upload at 8 fps is 8 frames


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        ({"output": "../secret.mp4"}, "Output: '../secret.mp4' is not a bare file name"),
        ({"output": "/etc/passwd"}, "Output: '/etc/passwd' is not a bare file name"),
        ({"output": "nothing_here.mp4"}, "Output: 'nothing_here.mp4' is not a video in the output folder"),
        ({"output": ""}, "Output is empty; give the file name of a video this app made, or upload a video"),
        ({"output": "x.mp4", "video": "clip"}, "Output is given and so is video; give the name of an output, or upload a video, not both"),
        ({"output": "", "video": "clip", "positions": "0,1,2", "multipliers": "0,0,0"}, "Positions: cover all 9 frames"),
    ],
)
def test_continue_api_refusals(server, tmp_path, inputs, says) -> None:
    if inputs.get("video") == "clip":
        inputs = {**inputs, "video": handle_file(write_mp4(numbered_clip(9, (96, 64)), tmp_path / "clip.mp4", 8))}
    with pytest.raises(AppError) as caught:
        server.client.predict(**inputs, prompt="a red ball", **SMALL, api_name="/continue")
    assert says in str(caught.value)


def test_v2v_api_takes_last_frames_and_names_a_bad_choice(server) -> None:
    video, settings_file, _, _ = server.client.predict(**task_inputs("v2v"), **SMALL, frames_from="last", api_name="/v2v")
    assert json.loads(Path(settings_file).read_text())["frames_from"] == "last"
    with pytest.raises(AppError) as caught:
        server.client.predict(**task_inputs("v2v"), **SMALL, frames_from="middle", api_name="/v2v")
    assert "Take the frames from must be one of 'first', 'last', got 'middle'" in str(caught.value)


def test_scripts_choose_first_or_last_frames_too(tmp_path) -> None:
    clip = write_mp4(numbered_clip(9), tmp_path / "clip.mp4", 8)
    base = {"task": "v2v", "video": str(clip), "positions": "0,1", "multipliers": "0,0.3"}
    assert request_from(base, Settings(num_frames=9), 0.2).frames_from == "first"
    assert request_from({**base, "frames_from": "last"}, Settings(num_frames=9), 0.2).frames_from == "last"
    with pytest.raises(PusaInputError, match="frames_from: must be one of 'first', 'last', got 'end'"):
        request_from({**base, "frames_from": "end"}, Settings(num_frames=9), 0.2)


def test_a_streamed_mp4_refuses_frames_of_another_size(tmp_path) -> None:
    frames = (f for f in [*numbered_clip(3), numbered_clip(1, (32, 64))[0]])
    with pytest.raises(ValueError, match="a 32x64 frame among 64x64 frames"):
        write_mp4(frames, tmp_path / "mixed.mp4", 8)
    assert video_info(write_mp4(iter(numbered_clip(3)), tmp_path / "streamed.mp4", 8)) == (3, 64, 64)


def test_an_original_of_another_size_and_rate_is_fitted_to_the_new_part(tmp_path) -> None:
    folder = OutputFolder(tmp_path / "outputs")
    original = write_mp4(numbered_clip(32, (128, 64)), tmp_path / "wide.mp4", 32)  # 1 s at 32 fps, 2:1
    part = write_mp4(numbered_clip(9), folder.root / "v2v_2_seed4.mp4", 8)
    settings = {"task": "v2v", "positions": [0, 1], "multipliers": [0.0, 0.3], "frames_from": "last",
                "settings": {"width": 64, "height": 64, "fit": "crop", "fps": 8, "seed": 4, "num_frames": 9}}
    joined = write_joined(folder, original, part, settings)
    assert (joined.original_frames, joined.num_frames) == (8, 8 + 9 - 5)  # 1 s at 8 fps
    assert video_info(joined.video_path) == (12, 64, 64)
    assert frame_levels(read_video(joined.video_path)[0])[:8] == list(range(0, 32, 4))


def test_a_video_with_too_many_frames_is_refused(tmp_path, monkeypatch) -> None:
    import pusa_core.media as media

    clip = write_mp4(numbered_clip(12), tmp_path / "long.mp4", 8)
    monkeypatch.setattr(media, "MAX_VIDEO_FRAMES", 10)
    with pytest.raises(PusaInputError, match="'long.mp4' has more than 10 frames; cut it shorter"):
        read_video(clip, max_frames=3, last=True)
    assert len(read_video(clip, max_frames=3)[0]) == 3  # the first frames stop early, before the limit matters


def test_the_result_buttons_are_off_until_there_is_a_video(server) -> None:
    labels = ("Continue this video", "Use last frame", "Use as keyframe")
    buttons = [c["props"] for c in server.client.config["components"] if c["props"].get("value") in labels]
    # Under each tab's result, and under the History panel's chosen video.
    assert len(buttons) == (4 + 1) * 3 and all(b["interactive"] is False for b in buttons)
