"""Image-to-Video tab: the image becomes latent frame 0, lightly noised, and the rest is generated."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


from pusa_core import facts
from pusa_core.requests import ImageToVideo, Request, Settings
from ui.examples import ExampleSet
from ui.form import number
from ui.task_tab import SchedulePlan, TaskInputs, TaskSpec
from ui.widgets import NOISE_HELP, ImageUpload, default_note, limit_slider, prompt_box


def _inputs(defaults: Settings, noise_multiplier: float, examples: ExampleSet) -> TaskInputs:
    image = ImageUpload(
        label="Start image", type="filepath", image_mode=None, sources=["upload", "clipboard"], height=280, elem_id="i2v-image"
    )
    prompt = prompt_box("i2v", "What happens after this first frame, e.g. 'the sun sets slowly over the sea'")
    noise = limit_slider(
        facts.NOISE_MULTIPLIER, noise_multiplier, "Noise multiplier",
        f"{NOISE_HELP} ({default_note(noise_multiplier, facts.DEFAULT_NOISE_MULTIPLIER, examples.small)})",
    )
    return TaskInputs(
        {"image": image, "prompt": prompt, "noise_multiplier": noise},
        examples=[[still, text] for still, text in examples.stills],
        example_names=("image", "prompt"),
    )


def _request(values: dict[str, Any], settings: Settings) -> Request:
    return ImageToVideo(settings=settings, image=values["image"], noise_multiplier=number(values["noise_multiplier"], "noise_multiplier"))


def _schedule(values: dict[str, Any]) -> SchedulePlan:
    return [0], [values["noise_multiplier"]], ["the image"]


def _saved(data: dict[str, Any], find_input: Callable[[Any], Path | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (image := find_input(data.get("image"))) is not None:
        out["image"] = str(image)
    if "noise_multiplier" in data:
        out["noise_multiplier"] = data["noise_multiplier"]
    return out


SPEC = TaskSpec(
    task="i2v",
    label="Image-to-Video",
    doc="Image-to-video: animate `image` as the first frame.",
    inputs=_inputs,
    to_request=_request,
    schedule=_schedule,
    schedule_names=("noise_multiplier",),
    saved_values=_saved,
)
