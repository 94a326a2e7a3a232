"""Multi-Frames tab: start/end frames or keyframes, one image per latent position, each with its own multiplier."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gradio as gr

from pusa_core.conditioning import MULTIPLIERS_EXAMPLE, parse_multipliers, parse_positions
from pusa_core.errors import PusaInputError
from pusa_core.facts import latent_frame_count
from pusa_core.requests import MultiFrames, Request, Settings
from ui.form import saved_lists
from ui.task_tab import SchedulePlan, TaskInputs, TaskSpec
from ui.widgets import IMAGE_TYPES, prompt_box


def _paths(images: Any) -> list[str]:
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        raise PusaInputError("images", f"must be a list of image files, got {type(images).__name__}")
    return [str(getattr(item, "name", item)) for item in images]


def start_end_positions(num_frames: int) -> str:
    """First and last latent slot: the start/end-frame example for any length."""
    return f"0,{latent_frame_count(num_frames) - 1}"


def _inputs(defaults: Settings, noise_multiplier: float, examples_dir: Path) -> TaskInputs:
    first_last = start_end_positions(defaults.num_frames)
    images = gr.File(
        label="Images, in the order of the positions (at least two: start and end, or keyframes)",
        file_count="multiple",
        file_types=IMAGE_TYPES,
        type="filepath",
        allow_reordering=True,
    )
    prompt = prompt_box("multiframe", "What happens between the frames, e.g. 'a red ball rolls across the grass'")
    with gr.Row():
        positions = gr.Textbox(
            label="Positions", value=first_last, elem_id="multiframe-positions",
            info=f"Latent frame per image, comma-separated; {first_last} = first and last frame",
        )
        multipliers = gr.Textbox(
            label="Multipliers", value=MULTIPLIERS_EXAMPLE,
            info="Noise per image: 0 keeps it exactly, 1 ignores it; e.g. 0.2,0.5",
        )
    example = [
        [str(examples_dir / "ball_start.png"), str(examples_dir / "ball_end.png")],
        "a red ball rolls across the green grass from left to right",
        first_last,
        MULTIPLIERS_EXAMPLE,
    ]
    return TaskInputs(
        {"images": images, "prompt": prompt, "positions": positions, "multipliers": multipliers},
        examples=[example],
        example_names=("images", "prompt", "positions", "multipliers"),
    )


def _request(values: dict[str, Any], settings: Settings) -> Request:
    return MultiFrames(
        settings=settings,
        images=tuple(_paths(values["images"])),
        positions=parse_positions(values["positions"], "positions"),
        multipliers=parse_multipliers(values["multipliers"], "multipliers"),
    )


def _schedule(values: dict[str, Any]) -> SchedulePlan:
    try:
        names = [f"image {i + 1} ({Path(p).name})" for i, p in enumerate(_paths(values["images"]))]
    except PusaInputError:
        names = []
    return values["positions"], values["multipliers"], names or None


def _saved(data: dict[str, Any], find_input: Callable[[Any], Path | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    recorded = data.get("images")
    if isinstance(recorded, list) and recorded:
        found = [find_input(item) for item in recorded]
        if all(found):
            out["images"] = [str(p) for p in found]
    return {**out, **saved_lists(data, ("positions", "multipliers"))}


SPEC = TaskSpec(
    task="multiframe",
    label="Multi-Frames",
    doc="Start/end frames or keyframes: one image per latent position.",
    inputs=_inputs,
    to_request=_request,
    schedule=_schedule,
    schedule_names=("images", "positions", "multipliers"),
    saved_values=_saved,
)
