"""Multi-Frames tab: start/end frames or keyframes, one image per position, each with its own multiplier.

Positions are typed in latent slots, pixel frames or seconds (the unit choice); the tab converts them
with :mod:`pusa_core.position_units`, says where each lands, and shows the images in order with theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gradio as gr

from pusa_core.conditioning import MULTIPLIERS_EXAMPLE, parse_multipliers, parse_positions, validate_settings
from pusa_core.errors import PusaInputError
from pusa_core.facts import latent_frame_count
from pusa_core.position_units import FRAME, LATENT, SECONDS, conversion_lines, to_latent_slots
from pusa_core.requests import MultiFrames, Request, Settings
from ui.examples import ExampleSet
from ui.form import comma_list, number, saved_lists
from ui.runner import field_message
from ui.task_tab import SchedulePlan, TaskInputs, TaskSpec
from ui.widgets import IMAGE_TYPES, MULTIPLIERS_HELP, EngineCheckedRadio, SharedControls, prompt_box

UNIT_CHOICES = [("latent slots", LATENT), ("pixel frames", FRAME), ("seconds", SECONDS)]


def _paths(images: Any) -> list[str]:
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        raise PusaInputError("images", f"must be a list of image files, got {type(images).__name__}")
    return [str(getattr(item, "name", item)) for item in images]


def start_end_positions(num_frames: int) -> str:
    """First and last latent slot: the start/end-frame example for any length."""
    return f"0,{latent_frame_count(num_frames) - 1}"


def _inputs(defaults: Settings, noise_multiplier: float, examples: ExampleSet) -> TaskInputs:
    first_last = start_end_positions(defaults.num_frames)
    images = gr.File(
        label="Images, in the order of the positions (at least two: start and end, or keyframes)",
        file_count="multiple",
        file_types=IMAGE_TYPES,
        type="filepath",
        allow_reordering=True,
        elem_id="multiframe-images",
    )
    strip = gr.Gallery(
        label="Keyframes in order, with the latent slot each goes to", columns=5, height=150, fit_columns=False,
        object_fit="contain", allow_preview=False, interactive=False, elem_id="multiframe-keyframes",
    )
    prompt = prompt_box("multiframe", f"What happens between the frames, e.g. '{examples.keyframes[0][2]}'")
    unit = EngineCheckedRadio(
        UNIT_CHOICES, value=LATENT, label="Positions in", elem_id="multiframe-unit",
        info="Latent slots are what Pusa conditions (slot k = pixel frames 4k-3..4k); frames and seconds are converted",
    )
    with gr.Row():
        positions = gr.Textbox(
            label="Positions", value=first_last, elem_id="multiframe-positions",
            info=f"One per image, comma-separated; in latent slots {first_last} = first and last frame",
        )
        multipliers = gr.Textbox(label="Multipliers", value=MULTIPLIERS_EXAMPLE, info=MULTIPLIERS_HELP)
    note = gr.Markdown(positions_note(first_last, LATENT, defaults.num_frames, defaults.fps), elem_id="multiframe-positions-note")
    example_multipliers = comma_list((noise_multiplier, noise_multiplier)) if examples.small else MULTIPLIERS_EXAMPLE
    rows = [[[start, end], text, first_last, example_multipliers, LATENT] for start, end, text in examples.keyframes]
    return TaskInputs(
        {"images": images, "prompt": prompt, "positions": positions, "multipliers": multipliers, "position_unit": unit},
        examples=rows,
        example_names=("images", "prompt", "positions", "multipliers", "position_unit"),
        # A file list shows as bare names; the captions say what each example is.
        example_labels=[f"{text} (start and end frames)" for _, _, text in examples.keyframes],
        shown={"strip": strip, "note": note},
    )


def positions_note(positions: Any, unit: Any, frames: Any, fps: Any) -> str:
    """Where each typed position lands (``frame 80 → latent slot 20 ...``), or why it cannot."""
    try:
        lines = conversion_lines(positions, unit, *_length(frames, fps))
    except PusaInputError as err:
        return f"⚠️ {field_message(err.field, err.message)}"
    return "  \n".join(line.replace(" -> ", " → ") for line in lines)


def _length(frames: Any, fps: Any) -> tuple[int, float]:
    """Frames and fps as the engine reads them, refused with its messages: conversions need both."""
    settings = Settings(num_frames=number(frames, "num_frames"), fps=number(fps, "fps"))
    validate_settings(settings)
    return int(settings.num_frames), float(settings.fps)


def keyframe_strip(images: Any, positions: Any, unit: Any, frames: Any, fps: Any) -> list[tuple[str, str]]:
    """The uploaded images in order, captioned with their number and, when the positions read, their slot."""
    try:
        paths = _paths(images)
    except PusaInputError:
        return []
    try:
        slots: tuple[int, ...] | None = to_latent_slots(positions, unit, *_length(frames, fps))
    except PusaInputError:
        slots = None
    if slots is None or len(slots) != len(paths):
        return [(path, f"{i + 1}") for i, path in enumerate(paths)]
    return [(path, f"{i + 1} · slot {slot}") for i, (path, slot) in enumerate(zip(paths, slots))]


def _wire(own: TaskInputs, controls: SharedControls) -> None:
    c = own.components
    sources = [c["images"], c["positions"], c["position_unit"], controls.frames, controls.fps]
    for trigger in sources:
        trigger.change(keyframe_strip, sources, own.shown["strip"], queue=False, api_visibility="private")
        if trigger is not c["images"]:
            trigger.change(positions_note, sources[1:], own.shown["note"], queue=False, api_visibility="private")


def _slots(values: dict[str, Any], num_frames: Any, fps: Any) -> tuple[int, ...] | Any:
    """Positions as latent slots; latent-slot text passes through as typed, for the engine's own checks."""
    unit = values.get("position_unit", LATENT)
    if unit == LATENT:
        return values["positions"]
    return to_latent_slots(values["positions"], unit, *_length(num_frames, fps))


def _request(values: dict[str, Any], settings: Settings) -> Request:
    return MultiFrames(
        settings=settings,
        images=tuple(_paths(values["images"])),
        positions=parse_positions(_slots(values, settings.num_frames, settings.fps), "positions"),
        multipliers=parse_multipliers(values["multipliers"], "multipliers"),
    )


def _schedule(values: dict[str, Any]) -> SchedulePlan:
    try:
        names = [f"image {i + 1} ({Path(p).name})" for i, p in enumerate(_paths(values["images"]))]
    except PusaInputError:
        names = []
    return _slots(values, values["frames"], values["fps"]), values["multipliers"], names or None


def _saved(data: dict[str, Any], find_input: Callable[[Any], Path | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    recorded = data.get("images")
    if isinstance(recorded, list) and recorded:
        found = [find_input(item) for item in recorded]
        if all(found):
            out["images"] = [str(p) for p in found]
    # Settings record latent slots, whatever unit they were typed in.
    return {**out, **saved_lists(data, ("positions", "multipliers")), "position_unit": LATENT}


SPEC = TaskSpec(
    task="multiframe",
    label="Multi-Frames",
    doc="Start/end frames or keyframes: one image per latent position.",
    inputs=_inputs,
    to_request=_request,
    schedule=_schedule,
    schedule_names=("images", "positions", "multipliers", "position_unit"),
    saved_values=_saved,
    wire=_wire,
)
