"""Video-to-Video tab: extension, completion, transitions; the listed latent slots come from the encoded video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from pusa_core.conditioning import parse_multipliers, parse_positions
from pusa_core.facts import latent_frame_count, latent_to_pixel_frames
from pusa_core.errors import PusaInputError
from pusa_core.requests import Settings, VideoToVideo
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

TASK = "v2v"
EXTENSION_MULTIPLIERS = (0.0, 0.3, 0.4, 0.5)  # Pusa's extension example: the first 13 frames, noisier towards the new part


def extension_plan(num_frames: int) -> tuple[str, str]:
    """Keep the video's first latent slots (up to 4 = pixel frames 0-12) and generate the rest."""
    kept = min(len(EXTENSION_MULTIPLIERS), latent_frame_count(num_frames) - 1)
    return comma_list(range(kept)), comma_list(EXTENSION_MULTIPLIERS[:kept])


def completion_plan(num_frames: int) -> tuple[str, str]:
    """Keep the video's first and last slot and generate what lies between."""
    return f"0,{latent_frame_count(num_frames) - 1}", "0.0,0.3"


def _sources(positions: str) -> list[str] | None:
    try:
        parsed = parse_positions(positions, "positions")
    except PusaInputError:
        return None
    labels = []
    for p in parsed:
        first, last = latent_to_pixel_frames(p)
        labels.append(f"video frame {first}" if first == last else f"video frames {first}–{last}")
    return labels


def _schedule(positions: str, multipliers: str, frames: float, fps: float) -> str:
    return schedule_html(frames, positions, multipliers, fps, sources=_sources(positions))


def build_tab(runner: Runner, defaults: Settings, examples_dir: Path) -> TabForm:
    """Render the tab's contents in the current ``gr.Tab``."""
    ext_positions, ext_multipliers = extension_plan(defaults.num_frames)
    comp_positions, comp_multipliers = completion_plan(defaults.num_frames)
    with gr.Row():
        with gr.Column():
            video = gr.Video(label="Input video", sources=["upload"], height=280)
            prompt = prompt_box("What the whole video shows, e.g. 'a blue square moves across a white background'")
            with gr.Row():
                positions = gr.Textbox(
                    label="Positions", value=ext_positions,
                    info=f"Latent slots taken from the video: {ext_positions} extends its start, {comp_positions} completes it",
                )
                multipliers = gr.Textbox(
                    label="Multipliers", value=ext_multipliers, info="One per position, 0 (keep exactly) to 1 (ignore)"
                )
            schedule = gr.HTML(_schedule(ext_positions, ext_multipliers, defaults.num_frames, defaults.fps), js_on_load=None)
            controls = shared_controls(defaults)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="v2v-generate")
                cancel = gr.Button("Cancel", variant="stop", elem_id="v2v-cancel")
        with gr.Column():
            panel = output_panel(TASK)

    clip = str(examples_dir / "square.mp4")
    prompt_text = "a blue square moves across a white background"
    gr.Examples(
        examples=[[clip, prompt_text, ext_positions, ext_multipliers], [clip, prompt_text, comp_positions, comp_multipliers]],
        inputs=[video, prompt, positions, multipliers],
        example_labels=["Extend the start of the clip", "Complete between first and last frame"],
        label="Examples (fill the form; press Generate to run)",
        cache_examples=False,
        run_on_click=False,
    )

    def generate_v2v(
        video: str | None,
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
        """Video-to-video: keep the listed latent slots of ``video`` and generate the rest. Returns (video, settings JSON, seed used, message)."""

        def build() -> VideoToVideo:
            settings = build_settings(prompt, negative_prompt, seed, randomize_seed, steps, cfg, lora_alpha, size, fit, frames, fps)
            return VideoToVideo(
                settings=settings,
                video=video or "",
                positions=parse_positions(positions, "positions"),
                multipliers=parse_multipliers(multipliers, "multipliers"),
            )

        return runner.generate(build, request.session_hash if request else None, progress)

    wire_job(
        runner,
        generate=generate,
        cancel=cancel,
        fn=generate_v2v,
        inputs=[video, prompt, positions, multipliers, *controls.inputs()],
        outputs=panel.outputs(),
        message=panel.message,
        api_name=TASK,
        public_cancel=False,
    )
    wire_reuse_seed(panel, controls)
    schedule_inputs = [positions, multipliers, controls.frames, controls.fps]
    for trigger in schedule_inputs:
        trigger.change(_schedule, schedule_inputs, schedule, queue=False, api_visibility="private")

    def task_values(data: dict[str, Any]) -> list[Any]:
        saved_video = existing_path(data.get("video"))
        return [
            saved_video if saved_video else gr.skip(),
            comma_list(data["positions"]) if "positions" in data else gr.skip(),
            comma_list(data["multipliers"]) if "multipliers" in data else gr.skip(),
        ]

    return TabForm(TASK, "Video-to-Video", prompt, [video, positions, multipliers], task_values, controls)
