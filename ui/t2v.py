"""Text-to-Video tab: no conditioning frames, every latent frame starts from noise."""

from __future__ import annotations

from typing import Any

from pusa_core.requests import Request, Settings, TextToVideo
from ui.examples import ExampleSet
from ui.task_tab import SchedulePlan, TaskInputs, TaskSpec
from ui.widgets import prompt_box


def _inputs(defaults: Settings, noise_multiplier: float, examples: ExampleSet) -> TaskInputs:
    prompt = prompt_box("t2v", f"Describe the video, e.g. '{examples.prompts[0]}'")
    return TaskInputs({"prompt": prompt}, examples=[[text] for text in examples.prompts], example_names=("prompt",))


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
