"""Multi-Frames tab: start/end frames or keyframes, one image per latent position, each with its own multiplier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from pusa_core.conditioning import parse_multipliers, parse_positions
from pusa_core.facts import latent_frame_count
from pusa_core.requests import MultiFrames, Settings
from ui.common import (
    TabForm,
    build_settings,
    comma_list,
    existing_path,
    output_panel,
    prompt_box,
    shared_controls,
    wire_reuse_seed,
)
from ui.runner import Outputs, Runner, wire_job
from ui.schedule_plot import schedule_html

TASK = "multiframe"


def _paths(images: Sequence[Any] | None) -> list[str]:
    return [str(getattr(item, "name", item)) for item in images or []]


def _schedule(images: Sequence[Any] | None, positions: str, multipliers: str, frames: float, fps: float) -> str:
    names = [f"image {i + 1} ({Path(p).name})" for i, p in enumerate(_paths(images))]
    return schedule_html(frames, positions, multipliers, fps, sources=names or None)


def start_end_positions(num_frames: int) -> str:
    """First and last latent slot: the start/end-frame example for any length."""
    return f"0,{latent_frame_count(num_frames) - 1}"


def build_tab(runner: Runner, defaults: Settings, examples_dir: Path) -> TabForm:
    """Render the tab's contents in the current ``gr.Tab``."""
    first_last = start_end_positions(defaults.num_frames)
    with gr.Row():
        with gr.Column():
            images = gr.File(
                label="Images, in the order of the positions (at least two: start and end, or keyframes)",
                file_count="multiple",
                file_types=["image"],
                type="filepath",
                allow_reordering=True,
            )
            prompt = prompt_box("What happens between the frames, e.g. 'a red ball rolls across the grass'")
            with gr.Row():
                positions = gr.Textbox(
                    label="Positions", value=first_last, elem_id="multiframe-positions",
                    info=f"Latent frame per image, comma-separated; {first_last} = first and last frame",
                )
                multipliers = gr.Textbox(
                    label="Multipliers", value="0.2,0.5", info="Noise per image, 0 (keep exactly) to 1 (ignore)"
                )
            schedule = gr.HTML(
                _schedule(None, first_last, "0.2,0.5", defaults.num_frames, defaults.fps), js_on_load=None,
                elem_id="multiframe-schedule",
            )
            controls = shared_controls(defaults)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="multiframe-generate")
                cancel = gr.Button("Cancel", variant="stop", elem_id="multiframe-cancel")
        with gr.Column():
            panel = output_panel(TASK)

    gr.Examples(
        examples=[
            [
                [str(examples_dir / "ball_start.png"), str(examples_dir / "ball_end.png")],
                "a red ball rolls across the green grass from left to right",
                first_last,
                "0.2,0.5",
            ]
        ],
        inputs=[images, prompt, positions, multipliers],
        label="Examples (fill the form; press Generate to run)",
        cache_examples=False,
        run_on_click=False,
    )

    def generate_multiframe(
        images: list[str] | None,
        prompt: str,
        positions: str,
        multipliers: str,
        negative_prompt: str,
        seed: float | None,
        randomize_seed: bool,
        steps: float,
        cfg: float,
        lora_alpha: float,
        size: str,
        fit: str,
        frames: float,
        fps: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> Outputs:
        """Start/end frames or keyframes: one image per latent position. Returns (video, settings JSON, seed used, message)."""
        def build() -> MultiFrames:
            settings = build_settings(prompt, negative_prompt, seed, randomize_seed, steps, cfg, lora_alpha, size, fit, frames, fps)
            return MultiFrames(
                settings=settings,
                images=tuple(_paths(images)),
                positions=parse_positions(positions, "positions"),
                multipliers=parse_multipliers(multipliers, "multipliers"),
            )

        return runner.generate(build, request.session_hash if request else None, progress)

    wire_job(
        runner,
        generate=generate,
        cancel=cancel,
        fn=generate_multiframe,
        inputs=[images, prompt, positions, multipliers, *controls.inputs()],
        outputs=panel.outputs(),
        message=panel.message,
        api_name=TASK,
        public_cancel=False,
    )
    wire_reuse_seed(panel, controls)
    schedule_inputs = [images, positions, multipliers, controls.frames, controls.fps]
    for trigger in (images, positions, multipliers, controls.frames, controls.fps):
        trigger.change(_schedule, schedule_inputs, schedule, queue=False, api_visibility="private")

    def task_values(data: dict[str, Any]) -> list[Any]:
        saved = [existing_path(p) for p in data.get("images", [])]
        return [
            saved if saved and all(saved) else gr.skip(),
            comma_list(data["positions"]) if "positions" in data else gr.skip(),
            comma_list(data["multipliers"]) if "multipliers" in data else gr.skip(),
        ]

    return TabForm(TASK, "Multi-Frames", prompt, [images, positions, multipliers], task_values, controls)
