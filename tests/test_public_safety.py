"""The app as an attacker and a careless caller would use it: no file leaves the server, leaving stops the job,
every refusal is the app's own, and the deployment flags do what they say."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app as app_module
from pusa_core import facts
from pusa_core.engine import Engine
from pusa_core.outputs import OutputFolder, Retention
from pusa_core.tiny_models import random_tiny_components
from tests.support.server import EXAMPLES, ROOT, SMALL, Server, serve, task_inputs
from ui.blocks import RESTORE_NOTE


class PassCounter:
    """Counts transformer passes (a forward hook on the real model), so a test can tell how far a job ran."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        self._lock = threading.Lock()
        engine._components.transformer.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        with self._lock:
            self.count += 1



@pytest.fixture(scope="module")
def passes(server: Server) -> PassCounter:
    return PassCounter(server.engine)


# -- 1. load settings never serves a file it did not write --------------------------------------------
def settings_naming(tmp_path: Path, image: object, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"task": "i2v", "image": image, "noise_multiplier": 0.3, "settings": {"seed": 7, **SMALL_SETTINGS}}))
    return path


SMALL_SETTINGS = {"width": 96, "height": 64, "num_frames": 9, "steps": 2}


def loaded_files(values: list) -> list[str]:
    """Values the load returned that are files the client was handed (gradio_client downloads them)."""
    return [v for v in values if isinstance(v, str) and os.path.isfile(v)]


def test_load_settings_serves_no_file_that_a_json_names(server: Server, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), "red").save(outside)
    link = server.output_dir / "link.png"
    link.symlink_to(outside)
    attacks = {
        "relative": "app.py",
        "absolute": str(ROOT / "app.py"),
        "git": str(ROOT / ".git" / "config"),
        "passwd": "/etc/passwd",
        "symlink": str(link),
        "dotdot": str(server.output_dir / ".." / outside.parent.name / outside.name),
        "missing": str(tmp_path / "missing.png"),
        "missing-in-outputs": str(server.output_dir / "missing.png"),
        "hash-not-kept": {"name": "x.png", "sha256": "0" * 64},
        "hash-glob": {"name": "x.png", "sha256": "*"},
        "hash-traversal": {"name": "x.png", "sha256": "../../etc/passwd"},
    }
    notes = set()
    for name, image in attacks.items():
        values = server.client.predict(handle_file(settings_naming(tmp_path, image, name)), api_name="/load_settings")
        assert loaded_files(values) == [], name
        note = values[-1].replace(f"`{name}.json`", "`X.json`")
        notes.add(note)
        assert os.getcwd() not in note and str(ROOT) not in note
    # One neutral note for all of them: nothing tells an existing path from a missing one.
    assert notes == {"Loaded the settings of `X.json` into Image-to-Video (seed 7)." + RESTORE_NOTE}


def test_load_settings_brings_back_the_inputs_this_app_kept(server: Server, tmp_path: Path) -> None:
    _, settings_file, _, _ = server.client.predict(**task_inputs("i2v"), **SMALL, api_name="/i2v")
    saved = json.loads(Path(settings_file).read_text())
    assert saved["image"]["name"] == "sunset.png" and len(saved["image"]["sha256"]) == 64
    values = server.client.predict(handle_file(settings_file), api_name="/load_settings")
    [restored] = loaded_files(values)
    assert Path(restored).read_bytes() == (EXAMPLES / "sunset.png").read_bytes()
    assert RESTORE_NOTE not in values[-1]


# -- 2. leaving stops the job ----------------------------------------------------------------------------
CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from gradio_client import Client
    client = Client(sys.argv[1], verbose=False)
    job = client.submit(prompt="a red ball", size="320x320", frames=33, steps=50, api_name="/t2v")
    while not job.status().progress_data:
        time.sleep(0.05)
    print("running", flush=True)
    time.sleep(600)
    """
)


def finish_next_job(server: Server) -> str:
    _, _, _, message = server.client.predict(**task_inputs("t2v"), **SMALL, api_name="/t2v")
    return message


def test_a_client_that_dies_mid_job_stops_it_within_a_step(server: Server, passes: PassCounter) -> None:
    before = set(server.output_dir.iterdir())
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, server.url], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "running"
        at_kill = passes.count
        client.send_signal(signal.SIGKILL)
    finally:
        client.wait(30)
    message = finish_next_job(server)
    assert message.startswith("Done in ")
    # The next job (2 steps x 2 passes) ran; the killed one did at most the step in flight and one more.
    killed_after = passes.count - at_kill - 4
    assert 0 <= killed_after <= 4, killed_after
    assert {p.suffix for p in set(server.output_dir.iterdir()) - before} <= {".mp4", ".json", ""}
    assert len([p for p in set(server.output_dir.iterdir()) - before if p.suffix == ".mp4"]) == 1


def test_job_cancel_from_gradio_client_stops_it_within_a_step(server: Server, passes: PassCounter) -> None:
    before = {p for p in server.output_dir.glob("*.mp4")}
    job = server.client.submit(**task_inputs("t2v"), size="320x320", frames=33, steps=50, api_name="/t2v")
    deadline = time.monotonic() + 120
    while not job.status().progress_data and time.monotonic() < deadline:
        concurrent.futures.wait([job.future], timeout=0.05)
    at_cancel = passes.count
    job.cancel()
    message = finish_next_job(server)
    assert message.startswith("Done in ")
    assert 0 <= passes.count - at_cancel - 4 <= 4
    assert len(set(server.output_dir.glob("*.mp4")) - before) == 1


# -- 4. every refusal is the app's own -------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"steps": 0}, f"Inference steps must be a whole number from 1 to {facts.STEPS.high:g}, got 0"),
        ({"steps": 1000}, "Inference steps must be a whole number from 1 to"),
        ({"steps": None}, "Inference steps is empty; type a number"),
        ({"steps": "many"}, "Inference steps: 'many' is not a number"),
        ({"cfg": -1}, f"Guidance (CFG) must be a number from 1 to {facts.CFG.high:g}, got -1"),
        ({"cfg": 0.5}, "Guidance (CFG) must be a number from 1 to"),
        ({"lora_alpha": 10}, f"LoRA alpha must be a number from 0 to {facts.LORA_ALPHA.high:g}, got 10"),
        ({"frames": 0}, "Frames must be 4k+1 (1, 5, ..., 81, ...) up to 201, got 0; try 1"),
        ({"frames": 1000}, "Frames must be 4k+1 (1, 5, ..., 81, ...) up to 201, got 1000; try 201"),
        ({"fps": 0}, "Frames per second must be a whole number from 1 to"),
        ({"fit": "stretch"}, "Fit must be 'crop' or 'pad', got 'stretch'"),
        ({"randomize_seed": "yes"}, "Random seed must be true or false, got 'yes'"),
        ({"randomize_seed": False, "seed": "abc"}, "Seed: 'abc' is not a number"),
        ({"prompt": "x" * 5000}, "Prompt has 5,000 characters; the limit is 4,000"),
    ],
)
def test_out_of_range_values_get_the_apps_message_naming_the_field(server: Server, changes: dict, expected: str) -> None:
    with pytest.raises(AppError) as caught:
        server.client.predict(**{**task_inputs("t2v"), **SMALL, **changes}, api_name="/t2v")
    assert str(caught.value).startswith(expected), str(caught.value)


def test_the_sliders_show_the_engines_limits(server: Server) -> None:
    config = server.client.config
    sliders = {c["props"].get("label"): c["props"] for c in config["components"] if c.get("type") == "slider"}
    for label, limit in (("Inference steps", facts.STEPS), ("Guidance (CFG)", facts.CFG), ("LoRA alpha", facts.LORA_ALPHA),
                         ("Frames", facts.FRAMES), ("Frames per second", facts.FPS), ("Noise multiplier", facts.NOISE_MULTIPLIER)):
        assert (sliders[label]["minimum"], sliders[label]["maximum"]) == (limit.low, limit.high), label


def test_a_text_file_named_png_gets_the_apps_message(server: Server, tmp_path: Path) -> None:
    fake = tmp_path / "photo.png"
    fake.write_text("not an image at all")
    with pytest.raises(AppError) as caught:
        server.client.predict(**{**task_inputs("i2v"), "image": handle_file(fake)}, **SMALL, api_name="/i2v")
    message = str(caught.value)
    assert message.startswith("Image: 'photo.png' is not a readable image; use a PNG, JPEG or WebP file"), message
    assert "/tmp" not in message and "index 0" not in message


def test_empty_multipliers_suggest_multipliers(server: Server) -> None:
    with pytest.raises(AppError, match=r"^Multipliers is empty; give a comma-separated list, e\.g\. 0\.2,0\.5"):
        server.client.predict(**{**task_inputs("multiframe"), "multipliers": ""}, **SMALL, api_name="/multiframe")


def test_use_this_seed_is_off_until_a_video_has_a_seed(server: Server) -> None:
    buttons = [c["props"] for c in server.client.config["components"] if c["props"].get("value") == "Use this seed"]
    assert len(buttons) == 4 and all(b["interactive"] is False for b in buttons)


# -- 3. deployment flags -----------------------------------------------------------------------------------
def test_host_follows_a_spaces_server_name_and_stays_local_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PUSA_HOST", "GRADIO_SERVER_NAME", "PUSA_PORT", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert (app_module.parse_args([]).host, app_module.parse_args([]).port) == ("127.0.0.1", 7860)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    assert (app_module.parse_args([]).host, app_module.parse_args([]).port) == ("0.0.0.0", 7861)
    monkeypatch.setenv("PUSA_HOST", "10.1.2.3")
    assert app_module.parse_args([]).host == "10.1.2.3"
    assert app_module.parse_args(["--host", "127.0.0.2"]).host == "127.0.0.2"


def test_bad_flag_values_stop_with_the_flag_named(capsys: pytest.CaptureFixture) -> None:
    for argv, expected in ((["--auth", "nopassword"], "argument --auth: must be USER:PASSWORD"), (["--max-queue", "0"], "must be more than 0")):
        with pytest.raises(SystemExit):
            app_module.parse_args(argv)
        assert expected in capsys.readouterr().err


def test_auth_upload_cap_and_queue_limit_reach_gradio(tmp_path: Path) -> None:
    engine = Engine.from_components(random_tiny_components(), output_dir=tmp_path)
    demo, url = serve(engine, tmp_path, ["--auth", "ada:s3cret", "--max-upload-mb", "1", "--max-queue", "1"])
    try:
        with pytest.raises(Exception):
            Client(url, verbose=False)
        client = Client(url, auth=("ada", "s3cret"), verbose=False)
        big = tmp_path / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), np.uint8)).save(big)
        assert big.stat().st_size > 1024 * 1024
        with pytest.raises(Exception, match="(?i)file size|too large|exceeds"):
            client.predict(**{**task_inputs("i2v"), "image": handle_file(big)}, **SMALL, api_name="/i2v")
        assert demo.max_file_size == 1024 * 1024
        engine.wait_ready(120)
        running = client.submit(**task_inputs("t2v"), size="320x320", frames=33, steps=50, api_name="/t2v")
        while not running.status().progress_data:
            concurrent.futures.wait([running.future], timeout=0.05)
        waiting = client.submit(**task_inputs("t2v"), **SMALL, api_name="/t2v")
        while waiting.status().code.name not in ("IN_QUEUE", "FINISHED"):
            concurrent.futures.wait([waiting.future], timeout=0.05)
        with pytest.raises(Exception, match="(?i)queue is full"):
            client.predict(**task_inputs("t2v"), **SMALL, api_name="/t2v")
        running.cancel()  # gradio's own cancel route: not queued, so a full queue does not block it
        assert waiting.result(timeout=120)[3].startswith("Done in ")
    finally:
        demo.close()


def test_retention_keeps_the_newest_jobs_and_their_inputs(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path, Retention(keep_newest=2))
    source = tmp_path.parent / "src.png"
    Image.new("RGB", (4, 4), "blue").save(source)
    made = []
    for i in range(4):
        video = tmp_path / f"t2v_{i}.mp4"
        video.write_bytes(b"x")
        record = folder.record_input(source) if i == 0 else {"name": "none"}
        video.with_suffix(".json").write_text(json.dumps({"image": record}, indent=2))
        os.utime(video, (1000 + i, 1000 + i))
        made.append(video)
    removed = folder.prune(now=2000)
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["t2v_2.mp4", "t2v_3.mp4"]
    assert {p.name for p in removed} == {"t2v_0.mp4", "t2v_0.json", "t2v_1.mp4", "t2v_1.json", f"{record_hash(source)}.png"}
    days = OutputFolder(tmp_path, Retention(keep_days=1))
    os.utime(made[3], (2000 - 2 * 86400,) * 2)
    days.prune(now=2000)
    assert [p.name for p in tmp_path.glob("*.mp4")] == ["t2v_2.mp4"]


def record_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 6. long prompts -----------------------------------------------------------------------------------------
def test_a_prompt_past_the_encoders_length_is_cut_and_the_result_says_so(server: Server) -> None:
    long_prompt = " ".join(["red ball"] * 400)
    _, _, _, message = server.client.predict(**{**task_inputs("t2v"), "prompt": long_prompt}, **SMALL, cfg=1, api_name="/t2v")
    assert message.startswith("Done in ")
    cut = server.engine._components.max_sequence_length
    assert "Prompt: " in message and f"tokens, but the text encoder reads {cut}; only the first {cut} were used." in message


def test_job_time_limit_and_retention_reach_the_engine(tmp_path: Path) -> None:
    args = app_module.parse_args(
        ["--model", "random-tiny", "--output-dir", str(tmp_path), "--max-job-seconds", "90", "--keep-outputs", "5"]
    )
    engine, _ = app_module.make_engine(args)
    assert engine.jobs.max_job_seconds == 90.0
    assert engine.outputs.retention == Retention(keep_newest=5) and engine.outputs.root == tmp_path
