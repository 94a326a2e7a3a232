"""Video-to-Video tab: extension, completion, transitions; the listed latent slots come from the encoded video."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gradio as gr

from pusa_core.conditioning import parse_multipliers, parse_positions
from pusa_core.errors import PusaInputError
from pusa_core.facts import latent_frame_count, latent_to_pixel_frames
from pusa_core.requests import Request, Settings, VideoToVideo
from ui.examples import ExampleSet
from ui.form import comma_list, saved_lists
from ui.task_tab import SchedulePlan, TaskInputs, TaskSpec
from ui.widgets import MULTIPLIERS_HELP, prompt_box

EXTENSION_MULTIPLIERS = (0.0, 0.3, 0.4, 0.5)  # Pusa's extension example: the first 13 frames, noisier towards the new part
COMPLETION_MULTIPLIERS = (0.0, 0.3)


def extension_plan(num_frames: int) -> tuple[str, str]:
    """Keep the video's first latent slots (up to 4 = pixel frames 0-12) and generate the rest."""
    kept = min(len(EXTENSION_MULTIPLIERS), latent_frame_count(num_frames) - 1)
    return comma_list(range(kept)), comma_list(EXTENSION_MULTIPLIERS[:kept])


def small_extension_plan(noise_multiplier: float) -> tuple[str, str]:
    """A small model's extension: the first 5 frames (2 latent slots), as it was trained and evaluated."""
    return "0,1", comma_list((noise_multiplier, noise_multiplier))


def completion_plan(num_frames: int) -> tuple[str, str]:
    """Keep the video's first and last slot and generate what lies between."""
    return f"0,{latent_frame_count(num_frames) - 1}", comma_list(COMPLETION_MULTIPLIERS)


def _sources(positions: Any) -> list[str] | None:
    try:
        parsed = parse_positions(positions, "positions")
    except PusaInputError:
        return None
    labels = []
    for p in parsed:
        first, last = latent_to_pixel_frames(p)
        labels.append(f"video frame {first}" if first == last else f"video frames {first}–{last}")
    return labels


def _inputs(defaults: Settings, noise_multiplier: float, examples: ExampleSet) -> TaskInputs:
    ext_positions, ext_multipliers = extension_plan(defaults.num_frames)
    comp_positions, comp_multipliers = completion_plan(defaults.num_frames)
    video = gr.Video(label="Input video", sources=["upload"], height=280)
    prompt = prompt_box("v2v", "What the whole video shows, e.g. 'a blue square moves across a white background'")
    with gr.Row():
        positions = gr.Textbox(
            label="Positions", value=ext_positions,
            info=f"Latent slots taken from the video: {ext_positions} extends its start, {comp_positions} completes it",
        )
        multipliers = gr.Textbox(label="Multipliers", value=ext_multipliers, info=MULTIPLIERS_HELP)
    first_clip, first_text = examples.clips[0]
    if examples.small:
        extend = small_extension_plan(noise_multiplier)
        rows = [[clip, text, *extend] for clip, text in examples.clips]
        labels = [f"Extend: {text}" for _, text in examples.clips]
    else:
        rows = [[first_clip, first_text, ext_positions, ext_multipliers]]
        labels = ["Extend the start of the clip"]
    rows.append([first_clip, first_text, comp_positions, comp_multipliers])
    labels.append("Complete between first and last frame" + (f": {first_text}" if examples.small else ""))
    return TaskInputs(
        {"video": video, "prompt": prompt, "positions": positions, "multipliers": multipliers},
        examples=rows,
        example_names=("video", "prompt", "positions", "multipliers"),
        example_labels=labels,
    )


def _request(values: dict[str, Any], settings: Settings) -> Request:
    return VideoToVideo(
        settings=settings,
        video=values["video"] or "",
        positions=parse_positions(values["positions"], "positions"),
        multipliers=parse_multipliers(values["multipliers"], "multipliers"),
    )


def _schedule(values: dict[str, Any]) -> SchedulePlan:
    return values["positions"], values["multipliers"], _sources(values["positions"])


def _saved(data: dict[str, Any], find_input: Callable[[Any], Path | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (video := find_input(data.get("video"))) is not None:
        out["video"] = str(video)
    return {**out, **saved_lists(data, ("positions", "multipliers"))}


SPEC = TaskSpec(
    task="v2v",
    label="Video-to-Video",
    doc="Video-to-video: keep the listed latent slots of `video` and generate the rest.",
    inputs=_inputs,
    to_request=_request,
    schedule=_schedule,
    schedule_names=("positions", "multipliers"),
    saved_values=_saved,
)
