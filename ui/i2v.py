"""Image-to-Video tab: the image becomes latent frame 0, lightly noised, and the rest is generated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from pusa_core.requests import ImageToVideo, Settings
from ui.common import TabForm, build_settings, existing_path, output_panel, prompt_box, shared_controls, wire_reuse_seed
from ui.runner import Outputs, Runner, wire_job
from ui.schedule_plot import schedule_html

TASK = "i2v"


def _schedule(noise_multiplier: float, frames: float, fps: float) -> str:
    return schedule_html(frames, [0], [noise_multiplier], fps, sources=["the image"])


def build_tab(runner: Runner, defaults: Settings, noise_multiplier: float, examples_dir: Path) -> TabForm:
    """Render the tab's contents in the current ``gr.Tab``."""
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Start image", type="filepath", sources=["upload", "clipboard"], height=280, elem_id="i2v-image")
            prompt = prompt_box("What happens after this first frame, e.g. 'the sun sets slowly over the sea'")
            noise = gr.Slider(
                0.0, 1.0, value=noise_multiplier, step=0.05, label="Noise multiplier",
                info="Low = faithful to the image, high = freer (Pusa's default: 0.2)",
            )
            controls = shared_controls(defaults)
            schedule = gr.HTML(_schedule(noise_multiplier, defaults.num_frames, defaults.fps), js_on_load=None)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="i2v-generate")
                cancel = gr.Button("Cancel", variant="stop", elem_id="i2v-cancel")
        with gr.Column():
            panel = output_panel(TASK)

    gr.Examples(
        examples=[[str(examples_dir / "sunset.png"), "the sun sets slowly over the sea, gentle waves", 0.2]],
        inputs=[image, prompt, noise],
        label="Examples (fill the form; press Generate to run)",
        cache_examples=False,
        run_on_click=False,
    )

    def generate_i2v(
        image: str | None,
        prompt: str,
        noise_multiplier: float,
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
        """Image-to-video: animate ``image`` as the first frame. Returns (video, settings JSON, seed used, message)."""

        def build() -> ImageToVideo:
            settings = build_settings(prompt, negative_prompt, seed, randomize_seed, steps, cfg, lora_alpha, size, fit, frames, fps)
            return ImageToVideo(settings=settings, image=image, noise_multiplier=float(noise_multiplier))

        return runner.generate(build, request.session_hash if request else None, progress)

    wire_job(
        runner,
        generate=generate,
        cancel=cancel,
        fn=generate_i2v,
        inputs=[image, prompt, noise, *controls.inputs()],
        outputs=panel.outputs(),
        message=panel.message,
        api_name=TASK,
        public_cancel=True,
    )
    wire_reuse_seed(panel, controls)
    for trigger in (noise, controls.frames, controls.fps):
        trigger.change(_schedule, [noise, controls.frames, controls.fps], schedule, queue=False, api_visibility="private")

    def task_values(data: dict[str, Any]) -> list[Any]:
        saved_image = existing_path(data.get("image"))
        return [saved_image if saved_image else gr.skip(), data.get("noise_multiplier", gr.skip())]

    return TabForm(TASK, "Image-to-Video", prompt, [image, noise], task_values, controls, noise_multiplier=noise)
