"""Text-to-Video tab: no conditioning frames, every latent frame starts from noise."""

from __future__ import annotations

from typing import Any

import gradio as gr

from pusa_core.requests import Settings, TextToVideo
from ui.common import TabForm, build_settings, output_panel, prompt_box, shared_controls, wire_reuse_seed
from ui.runner import Outputs, Runner, wire_job

TASK = "t2v"
EXAMPLE_PROMPTS = (
    "a red ball bounces on a green field under a blue sky",
    "a cat walks slowly across a sunny room",
)


def build_tab(runner: Runner, defaults: Settings) -> TabForm:
    """Render the tab's contents in the current ``gr.Tab``."""
    with gr.Row():
        with gr.Column():
            prompt = prompt_box("Describe the video, e.g. 'a red ball bounces on a green field'")
            controls = shared_controls(defaults)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="t2v-generate")
                cancel = gr.Button("Cancel", variant="stop", elem_id="t2v-cancel")
        with gr.Column():
            panel = output_panel(TASK)

    gr.Examples(
        examples=[[text] for text in EXAMPLE_PROMPTS],
        inputs=[prompt],
        label="Examples (fill the form; press Generate to run)",
        cache_examples=False,
        run_on_click=False,
    )

    def generate_t2v(
        prompt: str,
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
        """Text-to-video from ``prompt`` alone. Returns (video, settings JSON, seed used, message)."""

        def build() -> TextToVideo:
            settings = build_settings(prompt, negative_prompt, seed, randomize_seed, steps, cfg, lora_alpha, size, fit, frames, fps)
            return TextToVideo(settings=settings)

        return runner.generate(build, request.session_hash if request else None, progress)

    wire_job(
        runner,
        generate=generate,
        cancel=cancel,
        fn=generate_t2v,
        inputs=[prompt, *controls.inputs()],
        outputs=panel.outputs(),
        message=panel.message,
        api_name=TASK,
        public_cancel=False,
    )
    wire_reuse_seed(panel, controls)

    def task_values(data: dict[str, Any]) -> list[Any]:
        return []

    return TabForm(TASK, "Text-to-Video", prompt, [], task_values, controls)
