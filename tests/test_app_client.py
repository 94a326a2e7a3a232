"""The app through ``gradio_client``, as a script would use it: every task, bad inputs, cancel, settings.

One server per module, in-process on a free port, over a random tiny engine at 96x64 and 9 frames,
so each job takes about a second on a CPU.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app as app_module
from pusa_core.engine import Engine, Progress
from pusa_core.media import video_info, write_mp4
from pusa_core.tiny_models import random_tiny_components
from ui.blocks import build_app
from ui.runner import GPU_QUEUE, progress_text
from ui.schedule_plot import schedule_html
from ui.v2v import completion_plan, extension_plan

from tests.support.server import EXAMPLES, SMALL, Server, serve, task_inputs



@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bad files: text posing as an image and as a video, and a clip too short for late positions."""
    folder = tmp_path_factory.mktemp("media")
    (folder / "notes.png").write_text("this is not an image")
    (folder / "notes.mp4").write_text("this is not a video")
    write_mp4(np.full((3, 64, 96, 3), 128, np.uint8), folder / "short.mp4", 8)
    return {"fake_image": folder / "notes.png", "fake_video": folder / "notes.mp4", "short_video": folder / "short.mp4"}


def codec_line(path: Path) -> str:
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return next(line for line in probe.stderr.splitlines() if "Video:" in line)


@pytest.mark.parametrize("task", ["i2v", "multiframe", "v2v", "t2v"])
def test_each_task_returns_a_playable_mp4_with_its_settings_beside_it(server: Server, task: str) -> None:
    video, settings_file, seed_used, message = server.client.predict(
        **task_inputs(task), **SMALL, seed=1234, randomize_seed=False, api_name=f"/{task}"
    )
    assert seed_used == 1234
    assert video_info(video) == (9, 96, 64)
    assert re.search(r"Video: h264\b.*yuv420p", codec_line(Path(video)))
    saved = server.output_dir / Path(video).name
    assert saved.is_file() and saved.name.startswith(f"{task}_") and "seed1234" in saved.name
    beside = saved.with_suffix(".json")
    assert beside.is_file() and Path(settings_file).name == beside.name
    settings = json.loads(beside.read_text())
    assert settings == json.loads(Path(settings_file).read_text())
    assert settings["task"] == task
    assert {k: settings["settings"][k] for k in ("seed", "width", "height", "num_frames", "steps")} == {
        "seed": 1234, "width": 96, "height": 64, "num_frames": 9, "steps": 2,
    }
    assert message.startswith("Done in ") and "9 frames of 96x64" in message and "seed 1234" in message


def test_random_seed_is_reported_and_saved(server: Server) -> None:
    _, settings_file, seed_used, message = server.client.predict(**task_inputs("t2v"), **SMALL, api_name="/t2v")
    assert isinstance(seed_used, int) and 0 <= seed_used < 2**32
    assert json.loads(Path(settings_file).read_text())["settings"]["seed"] == seed_used
    assert f"seed {seed_used}" in message


def bad_cases(media: dict[str, Path]) -> list[tuple[str, dict, str]]:
    """(task, changes to a good request, the start of the message the user must see)."""
    i2v, mf, v2v, t2v = (task_inputs(t) for t in ("i2v", "multiframe", "v2v", "t2v"))
    one_image = [handle_file(EXAMPLES / "ball_start.png")]
    return [
        ("i2v", {**i2v, "image": None}, "Image is missing; upload the image"),
        ("t2v", {**t2v, "prompt": "  "}, "Prompt is empty; describe the video"),
        ("t2v", {**t2v, "frames": 8}, "Frames must be 4k+1 (1, 5, ..., 81, ...) up to 201, got 8; try 9"),
        ("t2v", {**t2v, "size": "96 by 64"}, "Size: '96 by 64' is not a size; pick a preset or type WIDTHxHEIGHT"),
        ("t2v", {**t2v, "size": "100x64"}, "Size (width) must be a multiple of 16 between 16 and 1920, got 100; try 96"),
        ("t2v", {**t2v, "randomize_seed": False, "seed": None}, "Seed is empty; type a whole number, or tick 'Random seed'"),
        ("t2v", {**t2v, "randomize_seed": False, "seed": -5}, "Seed must be a whole number from 0 to 4294967295"),
        ("multiframe", {**mf, "positions": "0,a"}, "Positions: 'a' is not a whole number"),
        ("multiframe", {**mf, "positions": ""}, "Positions is empty; give a comma-separated list"),
        ("multiframe", {**mf, "multipliers": "0.2"}, "Multipliers has 1 values for 2 positions; give one multiplier per position"),
        ("multiframe", {**mf, "multipliers": "0.2,1.5"}, "Multipliers: '1.5' is outside [0, 1]"),
        ("multiframe", {**mf, "positions": "0,7"}, "Positions: 7 is out of range: 9 frames have latent indices 0..2"),
        ("multiframe", {**mf, "positions": "1,1"}, "Positions: 1 is listed more than once"),
        ("multiframe", {**mf, "images": one_image}, "Positions has 2 entries for 1 images; give one position per image"),
        ("multiframe", {**mf, "images": []}, "Images are missing; upload one image per position"),
        (
            "multiframe",
            {**mf, "images": [*one_image, handle_file(media["fake_image"])]},
            "Images (image 2): 'notes.png' is not a readable image; use a PNG, JPEG or WebP file",
        ),
        ("v2v", {**v2v, "video": None}, "Video is missing; upload the video"),
        ("v2v", {**v2v, "video": handle_file(media["fake_video"])}, "Video: 'notes.mp4'"),
        (
            "v2v",
            {**v2v, "video": handle_file(media["short_video"]), "positions": "0,2"},
            "Video has 3 frames but position 2 needs at least 9; use a longer video or lower positions",
        ),
    ]


def test_bad_inputs_each_get_their_own_message_and_the_app_keeps_serving(server: Server, media: dict[str, Path]) -> None:
    before = set(server.output_dir.iterdir())
    seen = []
    cases = bad_cases(media)
    assert len(cases) >= 15
    for task, inputs, expected in cases:
        with pytest.raises(AppError) as caught:
            server.client.predict(**{**SMALL, **inputs}, api_name=f"/{task}")
        message = str(caught.value)
        assert message.startswith(expected), (task, inputs, message)
        seen.append(message)
    assert len(set(seen)) == len(cases), "two bad inputs got the same message"
    assert set(server.output_dir.iterdir()) == before, "a rejected job wrote files"
    video, _, _, message = server.client.predict(**task_inputs("i2v"), **SMALL, api_name="/i2v")
    assert message.startswith("Done in ") and video_info(video) == (9, 96, 64)


def wait_until_running(job) -> None:
    """Block until the job reports progress (it is then registered for cancel); fail if it ends first."""
    deadline = time.monotonic() + 120
    while not job.done() and time.monotonic() < deadline:
        if job.status().progress_data:
            return
        concurrent.futures.wait([job.future], timeout=0.05)
    pytest.fail(f"the job never reported progress (done={job.done()})")


def test_cancel_from_the_client_stops_the_job_and_the_next_job_runs(server: Server) -> None:
    before = set(server.output_dir.iterdir())
    assert server.client.predict(api_name="/cancel") == "Nothing of yours is running, so there is nothing to cancel."
    job = server.client.submit(**task_inputs("t2v"), size="192x192", frames=17, steps=50, api_name="/t2v")
    wait_until_running(job)
    assert server.client.predict(api_name="/cancel") == "Cancelling: the job stops at the next denoising step."
    video, settings_file, seed_used, message = job.result(timeout=120)
    assert (video, settings_file, seed_used) == (None, None, None)
    stopped = re.fullmatch(r"Cancelled(?: after step (\d+) of 50)?\. Nothing was saved; the engine is ready for the next job\.", message)
    assert stopped and int(stopped.group(1) or 0) < 50, message
    assert set(server.output_dir.iterdir()) == before
    _, _, _, message = server.client.predict(**task_inputs("t2v"), **SMALL, api_name="/t2v")
    assert message.startswith("Done in ")


def test_load_settings_from_an_output_fills_that_tab(server: Server) -> None:
    _, settings_file, seed_used, _ = server.client.predict(
        **{**task_inputs("multiframe"), "multipliers": "0.1,0.6"}, **SMALL, api_name="/multiframe"
    )
    video_path = server.output_dir / Path(settings_file).with_suffix(".mp4").name
    for source in (settings_file, video_path):  # from the JSON and from the MP4's metadata
        values = server.client.predict(handle_file(source), api_name="/load_settings")
        assert values[-1].startswith(f"Loaded the settings of `{Path(source).name}` into Multi-Frames (seed {seed_used})")
        assert "0,2" in values and "0.1,0.6" in values and seed_used in values and "96x64" in values
        assert "a red ball rolls" in values


def test_load_settings_rejects_files_without_settings(server: Server, tmp_path: Path) -> None:
    with pytest.raises(AppError, match=r"^Settings file: 'square.mp4' carries no Pusa Studio settings"):
        server.client.predict(handle_file(EXAMPLES / "square.mp4"), api_name="/load_settings")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"task": "upscale", "settings": {}}))
    with pytest.raises(AppError, match=r"^Settings file: 'other.json' has no task this app knows \(got 'upscale'\)"):
        server.client.predict(handle_file(other), api_name="/load_settings")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(AppError, match=r"^Settings file: 'broken.json' is not a settings JSON file"):
        server.client.predict(handle_file(broken), api_name="/load_settings")


def test_every_task_shares_one_gpu_queue_with_a_stable_api_name(server: Server) -> None:
    demo = build_app(server.engine)
    jobs = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in ("i2v", "multiframe", "v2v", "t2v")}
    assert sorted(jobs) == ["i2v", "multiframe", "t2v", "v2v"]
    assert {(fn.concurrency_id, fn.concurrency_limit) for fn in jobs.values()} == {(GPU_QUEUE, 1)}


def test_generate_explains_and_does_nothing_until_the_model_is_loaded(tmp_path: Path) -> None:
    engine = Engine.from_components(random_tiny_components(), output_dir=tmp_path)  # never started: loading
    demo, url = serve(engine, tmp_path)
    try:
        with pytest.raises(AppError, match=r"^The model is still loading \(waiting to load\)\. Generate works as soon as"):
            Client(url, verbose=False).predict(**task_inputs("t2v"), **SMALL, api_name="/t2v")
    finally:
        demo.close()
    assert list(tmp_path.iterdir()) == []


def test_schedule_picture_shows_each_position_as_pixel_frames_and_seconds() -> None:
    html = schedule_html(81, "0, 20", "0.2,0.5", 16, sources=["image 1", "image 2"])
    assert html.count("<rect") == 21
    assert "<td>0</td><td>frame 0</td><td>0.00–0.06 s</td><td>0.2</td><td>image 1</td>" in html
    assert "<td>20</td><td>frames 77–80</td><td>4.81–5.06 s</td><td>0.5</td><td>image 2</td>" in html
    assert "81 frames = 21 latent frames at 16 fps (5.06 s). 2 conditioned" in html
    broken = schedule_html(81, "0,21", "0.2,0.5", 16)
    assert "<rect" not in broken and "<b>positions</b>: 21 is out of range: 81 frames have latent indices 0..20" in broken


def test_video_examples_fit_the_model_length() -> None:
    assert extension_plan(81) == ("0,1,2,3", "0,0.3,0.4,0.5")
    assert extension_plan(9) == ("0,1", "0,0.3")
    assert completion_plan(81)[0] == "0,20" and completion_plan(9)[0] == "0,2"


def test_flags_default_to_localhost_and_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PUSA_HOST", "PUSA_PORT", "PUSA_MODEL", "PUSA_WEIGHTS_DIR", "PUSA_OUTPUT_DIR", "PUSA_BASE_DIR", "PUSA_LORA",
                 "PUSA_PLACEMENT"):
        monkeypatch.delenv(name, raising=False)
    args = app_module.parse_args([])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, "auto")
    assert (args.weights_dir, args.output_dir, args.base_dir, args.lora, args.placement) == (
        Path("weights"), Path("outputs"), None, None, None,
    )
    monkeypatch.setenv("PUSA_HOST", "0.0.0.0")
    monkeypatch.setenv("PUSA_PORT", "9000")
    monkeypatch.setenv("PUSA_MODEL", "random-tiny")
    monkeypatch.setenv("PUSA_WEIGHTS_DIR", "/data/weights")
    monkeypatch.setenv("PUSA_PLACEMENT", "single")
    args = app_module.parse_args([])
    assert (args.host, args.port, args.model, args.weights_dir) == ("0.0.0.0", 9000, "random-tiny", Path("/data/weights"))
    assert args.placement == "single"
    args = app_module.parse_args(["--port", "7000", "--model", "pusa-tiny", "--share", "--placement", "offload"])
    assert (args.port, args.model, args.share, args.placement) == (7000, "pusa-tiny", True, "offload")


def test_asking_for_the_14b_model_without_its_weights_stops_with_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        app_module.main(["--model", "pusa-14b", "--weights-dir", str(tmp_path)])
    assert str(stopped.value.code).startswith("pusa studio: ") and "14B model is incomplete" in str(stopped.value.code)
    assert f"python -m pusa_core.download --local-dir {tmp_path}" in str(stopped.value.code)


def test_progress_reads_as_phase_step_and_time_left() -> None:
    assert progress_text(Progress("denoise", 0.5, 3, 10, 75.4, "step 3/10")) == "Denoising: step 3/10 · about 1:15 left"
    assert progress_text(Progress("denoise", 0.1, 1, 10, 9.0, "step 1/10")) == "Denoising: step 1/10 · about 9 s left"
    assert progress_text(Progress("decode", 0.92, None, None, None, "decoding frames")) == "Decoding the frames"
