"""The engine end to end on a tiny model: every task to a decoded MP4, seeds, settings, errors, cancel."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from pusa_core.engine import Engine
from pusa_core.errors import EngineNotReady, GenerationCancelled, JobTimedOut, PusaInputError
from pusa_core.latents import encode_pixels
from pusa_core.media import read_settings, read_video, video_info, write_mp4
from pusa_core.requests import ImageToVideo, MultiFrames, Settings, TextToVideo, VideoToVideo, request_from_dict
from pusa_core.tiny_models import random_tiny_components, tiny_vae


@pytest.fixture(scope="module")
def settings(tiny_engine) -> Settings:
    return replace(tiny_engine.defaults(), prompt="a red circle moves right", seed=11)


@pytest.fixture(scope="module")
def image():
    img = np.zeros((96, 128, 3), np.uint8)
    img[30:60, 40:80] = (220, 40, 40)
    return img


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = np.random.default_rng(1).integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)
    return write_mp4(frames, tmp_path_factory.mktemp("in") / "clip.mp4", 8)


def _requests(settings, image, clip):
    return {
        "i2v": ImageToVideo(settings, image=image),
        "multiframe": MultiFrames(settings, images=(image, image), positions=(0, 2), multipliers=(0.2, 0.5)),
        "v2v": VideoToVideo(settings, video=str(clip), positions=(0, 1), multipliers=(0.0, 0.3)),
        "t2v": TextToVideo(settings),
    }


@pytest.mark.parametrize("task", ["i2v", "multiframe", "v2v", "t2v"])
def test_every_task_writes_a_video_and_its_settings(tiny_engine, settings, image, clip, task):
    events = []
    result = tiny_engine.generate(_requests(settings, image, clip)[task], progress=events.append)
    assert video_info(result.video_path) == (settings.num_frames, settings.width, settings.height)
    assert result.video_path.name.startswith(f"{task}_") and "seed11" in result.video_path.name
    saved = json.loads(result.settings_path.read_text())
    assert saved == read_settings(result.video_path) == result.settings
    assert saved["task"] == task and saved["settings"]["seed"] == 11
    steps = [e.step for e in events if e.phase == "denoise"]
    assert steps == list(range(settings.steps + 1))
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_same_seed_same_video_and_random_seed_is_reported(tiny_engine, settings, image, clip):
    request = _requests(settings, image, clip)["i2v"]
    a, b = tiny_engine.generate(request), tiny_engine.generate(request)
    assert np.array_equal(read_video(a.video_path)[0], read_video(b.video_path)[0])
    assert a.video_path != b.video_path
    random_seed = tiny_engine.generate(replace(request, settings=replace(settings, seed=None)))
    assert random_seed.settings["settings"]["seed"] == random_seed.seed


def test_saved_settings_rebuild_the_request(tiny_engine, settings, clip, image):
    result = tiny_engine.generate(_requests(settings, image, clip)["v2v"])
    saved = read_settings(result.video_path)
    digest = hashlib.sha256(clip.read_bytes()).hexdigest()
    # No server path is recorded: the input's own name and its content hash.
    assert saved["video"] == {"name": clip.name, "sha256": digest}
    assert str(clip.parent) not in json.dumps(saved) and str(tiny_engine.outputs.root) not in json.dumps(saved)
    rebuilt = request_from_dict(saved, find_input=tiny_engine.outputs.find_input)
    kept = tiny_engine.outputs.root / "inputs" / f"{digest}.mp4"
    assert rebuilt == VideoToVideo(settings, video=str(kept), positions=(0, 1), multipliers=(0.0, 0.3))
    assert kept.read_bytes() == clip.read_bytes()
    with pytest.raises(PusaInputError, match=r"^video: 'clip.mp4' is not kept on this server any more; give the file again"):
        request_from_dict(saved)


def test_first_frame_follows_the_image_more_with_lower_multiplier(tiny_engine, settings, image):
    """A zero multiplier keeps the image's latent exactly, so frame 0 decodes to the VAE's reconstruction."""
    faithful = tiny_engine.generate(ImageToVideo(settings, image=image, noise_multiplier=0.0))
    free = tiny_engine.generate(ImageToVideo(settings, image=image, noise_multiplier=1.0))
    ref = read_video(faithful.video_path)[0][0].astype(float)
    again = tiny_engine.generate(ImageToVideo(replace(settings, seed=99), image=image, noise_multiplier=0.0))
    assert np.abs(read_video(again.video_path)[0][0] - ref).mean() < 3  # same frame 0 whatever the seed
    assert np.abs(read_video(free.video_path)[0][0] - ref).mean() > 3


def test_video_shorter_than_positions_need(tiny_engine, settings, clip):
    request = VideoToVideo(replace(settings, num_frames=17), video=str(clip), positions=(0, 3), multipliers=(0.0, 0.3))
    with pytest.raises(PusaInputError, match="video: has 9 frames but position 3 needs at least 13"):
        tiny_engine.generate(request)


def test_unreadable_inputs(tiny_engine, settings, tmp_path):
    (tmp_path / "x.png").write_text("nope")
    with pytest.raises(PusaInputError, match="images\\[2\\]: 'x.png' is not a readable image"):
        tiny_engine.generate(MultiFrames(settings, images=(np.zeros((8, 8, 3), np.uint8), tmp_path / "x.png"), positions=(0, 2), multipliers=(0.1, 0.1)))
    with pytest.raises(PusaInputError, match="video: 'x.png' (is not a readable video|has no frames that could be decoded)"):
        tiny_engine.generate(VideoToVideo(settings, video=str(tmp_path / "x.png"), positions=(0,), multipliers=(0.0,)))


def test_video_over_the_size_limit_is_refused_before_its_frames_are_decoded(tiny_engine, settings, tmp_path):
    wide = tmp_path / "wide.avi"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=16400x16",
               "-frames:v", "2", "-c:v", "mjpeg", str(wide)]
    subprocess.run(command, check=True)
    says = "video: 'wide.avi' is 16400x16 (0.26 MP) per frame; the limit is 40 MP and 16384 pixels a side; downscale it"
    with pytest.raises(PusaInputError, match=f"^{re.escape(says)}$"):
        tiny_engine.generate(VideoToVideo(settings, video=str(wide), positions=(0,), multipliers=(0.0,)))


def test_cancel_then_next_job_runs(tiny_engine, settings):
    cancel = threading.Event()

    def stop_after_first(p):
        if p.phase == "denoise" and p.step == 1:
            cancel.set()

    with pytest.raises(GenerationCancelled):
        tiny_engine.generate(TextToVideo(replace(settings, steps=4)), progress=stop_after_first, cancel=cancel)
    assert tiny_engine.generate(TextToVideo(settings)).video_path.is_file()


class ManualClock:
    """The engine's clock, moved by hand: a deadline test needs no real time to pass."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TIMED_OUT = ("this job ran past the 60 s limit set by --max-job-seconds and was stopped after step {} of 4; "
             "nothing was saved; lower the size, frames or steps")


def test_a_job_past_its_time_limit_stops_and_the_engine_stays_ready(tmp_path, settings):
    clock = ManualClock()
    engine = Engine.from_components(random_tiny_components(), tmp_path, max_job_seconds=60, clock=clock)
    assert engine.wait_ready(60).state == "ready"
    job = TextToVideo(replace(settings, steps=4))

    def slow(phase, step=None):
        def on_progress(p):
            if p.phase == phase and p.step == step:
                clock.now += 61
        return on_progress

    with pytest.raises(JobTimedOut) as err:
        engine.generate(job, progress=slow("denoise", 1))
    assert str(err.value) == TIMED_OUT.format(1)
    with pytest.raises(JobTimedOut) as err:  # a slow decode is caught before anything is written
        engine.generate(job, progress=slow("decode"))
    assert str(err.value) == TIMED_OUT.format(4)
    assert list(tmp_path.iterdir()) == [] and engine.status().state == "ready"
    result = engine.generate(job)
    assert result.video_path.is_file() and result.settings_path.is_file()


@pytest.mark.parametrize("limit", [0, -5, float("nan"), float("inf"), "600", True])
def test_time_limit_must_be_positive_seconds(limit):
    with pytest.raises(PusaInputError, match=r"^--max-job-seconds: .* is not a time limit; give a positive number "
                                             r"of seconds, e.g. 600, or leave it out for no limit$"):
        Engine(random_tiny_components, Path("unused"), "tiny", True, max_job_seconds=limit)


def test_all_frames_kept_at_multiplier_zero_skip_the_transformer(tmp_path, settings, clip):
    """V2V with every latent slot conditioned at 0: the video is the input's VAE round trip, no pass runs."""
    components = random_tiny_components()
    engine = Engine.from_components(components, tmp_path)
    assert engine.wait_ready(60).state == "ready"
    calls = []
    components.transformer.register_forward_hook(lambda *a: calls.append(1))
    request = VideoToVideo(settings, video=str(clip), positions=(0, 1, 2), multipliers=(0.0, 0.0, 0.0))
    again = [read_video(engine.generate(replace(request, settings=replace(settings, seed=seed))).video_path)[0]
             for seed in (1, 2)]
    assert calls == []
    assert np.array_equal(again[0], again[1])  # the seed no longer matters: nothing is sampled


def test_alpha_change_is_exact_between_jobs(tiny_engine, settings):
    base = TextToVideo(replace(settings, lora_alpha=1.0))
    first = read_video(tiny_engine.generate(base).video_path)[0]
    other = read_video(tiny_engine.generate(TextToVideo(replace(settings, lora_alpha=3.0))).video_path)[0]
    back = read_video(tiny_engine.generate(base).video_path)[0]
    assert np.array_equal(first, back)
    assert not np.array_equal(first, other)


def test_not_ready_and_failed_load(tmp_path, settings):
    gate = threading.Event()

    def slow():
        gate.wait(30)
        return random_tiny_components()

    engine = Engine(slow, tmp_path, "slow model", True)
    engine.start()
    assert engine.status().state == "loading"
    with pytest.raises(EngineNotReady, match="still loading"):
        engine.generate(TextToVideo(settings))
    with pytest.raises(PusaInputError, match="prompt: is empty"):  # validation answers even while loading
        engine.generate(TextToVideo(replace(settings, prompt="")))
    gate.set()
    assert engine.wait_ready(30).state == "ready"

    def broken():
        raise OSError("disk on fire")

    failed = Engine(broken, tmp_path, "broken", False)
    status = failed.wait_ready(30)
    assert status.state == "failed" and "disk on fire" in status.message
    with pytest.raises(EngineNotReady, match="failed to load: could not load broken: disk on fire"):
        failed.generate(TextToVideo(settings))


def test_vae_prefix_encoding_equals_whole_clip_for_those_slots():
    """The V2V shortcut: Wan's VAE is causal in time, so the first 4k+1 frames fix latents 0..k."""
    vae = tiny_vae(seed=2)
    pixels = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    whole = encode_pixels(vae, pixels)
    prefix = encode_pixels(vae, pixels[:, :, :9])
    assert torch.allclose(whole[:, :, :3], prefix, atol=1e-5)
