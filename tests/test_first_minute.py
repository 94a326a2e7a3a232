"""What a newcomer meets first: examples that fit the model, positions in any unit, the header, the help text."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from gradio_client.exceptions import AppError

from pusa_core.engine import Engine, EngineStatus
from pusa_core.errors import PusaInputError
from pusa_core.media import read_video
from pusa_core.position_units import conversion_lines, to_latent_slots
from pusa_core.requests import Settings, TextToVideo
from pusa_core.tiny_models import random_tiny_components
from pusa_core.training.data import EXAMPLE_PROMPTS, OBJECT_COLOURS
from pusa_core.training.examples import known_words, spec_from_caption, write_examples
from pusa_core.training.tracking import track
from pusa_core.weights import resolve_model_source
from ui.blocks import status_line
from ui.examples import EXAMPLES_DIR, examples_for
from ui.runner import Runner
from ui.schedule_plot import schedule_html
from ui.widgets import default_note
from tests.support.processes import ROOT
from tests.support.server import SMALL, served, task_inputs


@pytest.mark.parametrize(("text", "unit", "frames", "fps", "slots"), [
    ("0,20", "latent", 81, 16, (0, 20)),
    ("0,80", "frame", 81, 16, (0, 20)),
    ("0,77", "frame", 81, 16, (0, 20)),
    ("0,5", "seconds", 81, 16, (0, 20)),
    ("0, 2.5", "seconds", 81, 16, (0, 10)),
    ("0,16", "frame", 17, 8, (0, 4)),
    ("0,1", "seconds", 17, 8, (0, 2)),
])
def test_positions_convert_to_the_latent_slot_that_holds_the_frame(text, unit, frames, fps, slots) -> None:
    assert to_latent_slots(text, unit, frames, fps) == slots


def test_two_frames_in_one_slot_are_refused_saying_which() -> None:
    with pytest.raises(PusaInputError, match=r"frame 1 and frame 4 both fall in latent slot 1 \(frames 1–4\)"):
        to_latent_slots("0, 1, 4", "frame", 81, 16)
    with pytest.raises(PusaInputError, match=r"0.1 s and 0.2 s both fall in latent slot 1"):
        to_latent_slots("0.1, 0.2", "seconds", 81, 16)


@pytest.mark.parametrize(("text", "unit", "message"), [
    ("0,81", "frame", "frame 81 is outside the video: 81 frames are numbered 0..80"),
    ("0,20.5", "frame", "20.5 is not a whole frame number"),
    ("0,5.1", "seconds", "5.1 s is outside the video: 81 frames are numbered 0..80"),
    ("-1,2", "seconds", "-1 s is before the start"),
    ("0,x", "seconds", "'x' is not a number"),
    ("", "frame", "is empty"),
    ("0,21", "latent", "21 is out of range: 81 frames have latent indices 0..20"),
])
def test_bad_positions_are_refused_naming_the_field(text: str, unit: str, message: str) -> None:
    with pytest.raises(PusaInputError) as err:
        to_latent_slots(text, unit, 81, 16)
    assert err.value.field == "positions" and message in err.value.message


def test_an_unknown_unit_names_the_unit_field() -> None:
    with pytest.raises(PusaInputError) as err:
        to_latent_slots("0", "minutes", 81, 16)
    assert (err.value.field, err.value.message) == ("position_unit", "must be one of latent, frame, seconds, got 'minutes'")


def test_each_conversion_is_shown_with_its_frames_and_time() -> None:
    assert conversion_lines("0,80", "frame", 81, 16) == [
        "frame 0 -> latent slot 0 (frame 0, 0.00–0.06 s)",
        "frame 80 -> latent slot 20 (frames 77–80, 4.81–5.06 s)",
    ]
    assert conversion_lines("2.5", "seconds", 81, 16) == ["2.5 s (frame 40) -> latent slot 10 (frames 37–40, 2.31–2.56 s)"]
    assert conversion_lines("4", "latent", 17, 8) == ["latent slot 4 = frames 13–16, 1.62–2.12 s"]


@pytest.mark.parametrize("prompt", EXAMPLE_PROMPTS)
def test_example_captions_become_clips_the_tracker_follows_the_captioned_way(prompt: str, tmp_path: Path) -> None:
    spec = spec_from_caption(prompt)
    media = write_examples(tmp_path, [prompt], fps=8)[0]
    frames, fps = read_video(media.clip)
    assert frames.shape == (17, 64, 64, 3) and fps == 8
    path = track(frames, spec.colour, spec.background).positions
    assert not np.isnan(path).any()
    axis = 0 if spec.direction in ("left", "right") else 1
    sign = 1 if spec.direction in ("right", "down") else -1
    assert sign * (path[4, axis] - path[0, axis]) > 4  # it starts off the captioned way
    if not spec.bounces:
        assert sign * (path[-1, axis] - path[0, axis]) > 20
    assert media.start.is_file() and media.end.is_file()


def test_captions_outside_the_training_vocabulary_are_refused() -> None:
    with pytest.raises(ValueError, match="is not a training caption"):
        spec_from_caption("the sun sets slowly over the sea")
    with pytest.raises(ValueError, match="'orange' is not a colour the small model knows"):
        spec_from_caption("a orange circle moves right on a blue background")
    assert set(OBJECT_COLOURS) == set(known_words()["colours"])


def test_the_small_model_gets_its_own_examples_and_the_14b_keeps_the_shipped_ones(tmp_path: Path) -> None:
    small = Engine.from_source(resolve_model_source(ROOT / "weights", None, None, "pusa-tiny"), output_dir=tmp_path)
    examples = examples_for(small)
    assert examples.small and examples.prompts == tuple(EXAMPLE_PROMPTS)
    assert small.default_noise_multiplier() == 0.0  # its defaults.json, known before it loads
    image, prompt = examples.stills[0]
    assert prompt == EXAMPLE_PROMPTS[0] and Path(image).is_file()
    big = examples_for(Engine(random_tiny_components, tmp_path, "Pusa V1 14B", is_small=False))  # never loaded
    assert not big.small and big.stills[0][0] == str(EXAMPLES_DIR / "sunset.png")


def test_the_status_line_names_the_model_once() -> None:
    ready = EngineStatus("ready", "", "pusa-tiny (small demo model)", True, "cpu: no GPU", "cpu")
    assert status_line(ready) == "**Pusa Studio** · **Ready** · pusa-tiny (small demo model) · runs on cpu"
    loading = EngineStatus("loading", "loading pusa-tiny...", "pusa-tiny (small demo model)", True, "not placed yet")
    assert status_line(loading).count("pusa-tiny (small demo model)") == 1 and "(small model)" not in status_line(loading)


def test_a_default_that_is_not_pusas_says_whose_it_is() -> None:
    assert default_note(10, 10, small=True) == "10 is Pusa's default"
    assert default_note(1.0, 1.4, small=True) == "1 is the small model's default; Pusa 14B uses 1.4"
    assert default_note(4, 10, small=False, preset="fast") == "4 is the Fast preset's; Pusa 14B's Quality uses 10"


def test_the_schedule_has_a_legend_and_three_axes() -> None:
    html = schedule_html(17, "0,4", "0,0.5", 8)
    for text in ("latent slot", "first pixel frame", "starts at (s)", "generated from noise", "kept exactly (0)"):
        assert text in html
    assert html.count("<rect") == 5
    # Under slot 4: its first pixel frame (13) and start (13 / 8 fps = 1.6 s).
    assert ">13</text>" in html and ">1.6</text>" in html


def test_the_api_takes_positions_in_pixel_frames_and_saves_latent_slots(tmp_path: Path) -> None:
    engine = Engine.from_components(random_tiny_components(), output_dir=tmp_path)
    with served(engine, tmp_path) as server:
        inputs = {**task_inputs("multiframe"), "positions": "0,8", "position_unit": "frame"}
        _, settings_file, _, message = server.client.predict(**inputs, **SMALL, api_name="/multiframe")
        assert json.loads(Path(settings_file).read_text())["positions"] == [0, 2]  # 9 frames: frame 8 is in slot 2
        with pytest.raises(AppError, match=r"^Positions: frame 1 and frame 4 both fall in latent slot 1"):
            server.client.predict(**{**inputs, "positions": "1,4"}, **SMALL, api_name="/multiframe")


def test_cancel_reaches_a_page_job_still_waiting_in_the_queue(tmp_path: Path) -> None:
    engine = Engine.from_components(random_tiny_components(), output_dir=tmp_path)
    assert engine.wait_ready(120).state == "ready"
    runner = Runner(engine)
    build = lambda: TextToVideo(settings=Settings(prompt="a red ball", width=64, height=64, num_frames=9, steps=2))  # noqa: E731
    runner.waiting("page")  # Generate pressed; another user's job still runs
    assert runner.cancel("page") == "Cancelling: your job is still waiting in the queue, and will not run."
    assert asyncio.run(runner.generate(build, "page")) == (None, None, None, "Cancelled before it started. Nothing was run or saved.")
    assert list(tmp_path.glob("*.mp4")) == []
    runner.waiting("page")  # the next Generate runs as usual
    video, _, _, message = asyncio.run(runner.generate(build, "page"))
    assert message.startswith("Done in") and Path(video).is_file()
    runner.settled("page")
    assert runner.cancel("page") == "Nothing of yours is running, so there is nothing to cancel."


def test_a_tabs_cancel_stops_only_that_tabs_job_and_the_api_cancel_stops_them_all(tmp_path: Path) -> None:
    engine = Engine.from_components(random_tiny_components(), output_dir=tmp_path)
    assert engine.wait_ready(120).state == "ready"
    runner = Runner(engine)
    build = lambda: TextToVideo(settings=Settings(prompt="a red ball", width=64, height=64, num_frames=9, steps=2))  # noqa: E731
    cancelled = (None, None, None, "Cancelled before it started. Nothing was run or saved.")
    runner.waiting("page", "i2v")  # one page, a job waiting in two tabs
    runner.waiting("page", "t2v")
    assert runner.cancel("page", "t2v") == "Cancelling: your job is still waiting in the queue, and will not run."
    assert asyncio.run(runner.generate(build, "page", tab="t2v")) == cancelled
    video, _, _, message = asyncio.run(runner.generate(build, "page", tab="i2v"))  # the other tab's job still runs
    assert message.startswith("Done in") and Path(video).is_file()
    runner.waiting("page", "i2v")
    runner.waiting("page", "v2v")
    assert runner.cancel("page", None) == "Cancelling: your job is still waiting in the queue, and will not run."
    assert [asyncio.run(runner.generate(build, "page", tab=tab)) for tab in ("i2v", "v2v")] == [cancelled, cancelled]
