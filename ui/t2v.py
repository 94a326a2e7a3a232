"""Text-to-Video tab: no conditioning frames, every latent frame starts from noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pusa_core.requests import Request, Settings, TextToVideo
from ui.task_tab import SchedulePlan, TaskInputs, TaskSpec
from ui.widgets import prompt_box

EXAMPLE_PROMPTS = (
    "a red ball bounces on a green field under a blue sky",
    "a cat walks slowly across a sunny room",
)


def _inputs(defaults: Settings, noise_multiplier: float, examples_dir: Path) -> TaskInputs:
    prompt = prompt_box("t2v", "Describe the video, e.g. 'a red ball bounces on a green field'")
    return TaskInputs({"prompt": prompt}, examples=[[text] for text in EXAMPLE_PROMPTS], example_names=("prompt",))


def _request(values: dict[str, Any], settings: Settings) -> Request:
    return TextToVideo(settings=settings)


def _schedule(values: dict[str, Any]) -> SchedulePlan:
    return (), (), None


SPEC = TaskSpec(
    task="t2v",
    label="Text-to-Video",
    doc="Text-to-video from `prompt` alone.",
    inputs=_inputs,
    to_request=_request,
    schedule=_schedule,
)
