"""Widgets every tab shares, and the two-way mapping between them and ``pusa_core`` settings.

Form values arrive as gradio gives them (floats from sliders, free text from the size box); this
module turns them into a :class:`Settings` and leaves range checks to the engine, so the messages
a user sees name the same fields whether they use the page or ``gradio_client``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gradio as gr

from pusa_core.errors import PusaInputError
from pusa_core.requests import DEFAULT_NEGATIVE_PROMPT, Settings
from ui.zerogpu import JobSize

SIZE_PRESETS: tuple[tuple[str, str], ...] = (
    ("832x480 · landscape (Wan's size)", "832x480"),
    ("480x832 · portrait", "480x832"),
    ("1280x720 · landscape HD", "1280x720"),
    ("720x1280 · portrait HD", "720x1280"),
    ("624x624 · square", "624x624"),
)
FIT_CHOICES = [("Crop to fill", "crop"), ("Pad with black bars", "pad")]
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[x×X*,]\s*(\d+)\s*$")
# Order of the shared values in every handler's signature, after the task's own inputs.
SHARED_NAMES = ("negative_prompt", "seed", "randomize_seed", "steps", "cfg", "lora_alpha", "size", "fit", "frames", "fps")


def size_text(width: int, height: int) -> str:
    return f"{width}x{height}"


def size_choices(defaults: Settings) -> list[tuple[str, str]]:
    """The presets, with the model's own size first when it is not one of them (the small model's)."""
    own = size_text(defaults.width, defaults.height)
    if any(value == own for _, value in SIZE_PRESETS):
        return list(SIZE_PRESETS)
    return [(f"{own} · this model's own size", own), *SIZE_PRESETS]


def parse_size(text: str | None) -> tuple[int, int]:
    """``"832x480"`` -> ``(832, 480)``. The engine checks the numbers; this checks the shape of the text."""
    match = _SIZE_PATTERN.match(text or "")
    if not match:
        raise PusaInputError("size", f"{text!r} is not a size; pick a preset or type WIDTHxHEIGHT, e.g. 832x480")
    return int(match.group(1)), int(match.group(2))


def whole(value: float | int | None, field: str) -> int | float:
    """A form number as an int when it is whole; other values pass through for the engine to reject by name."""
    if value is None:
        raise PusaInputError(field, "is empty; type a number")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def seed_value(seed: float | int | None, randomize_seed: bool) -> int | float | None:
    if randomize_seed:
        return None
    if seed is None:
        raise PusaInputError("seed", "is empty; type a whole number, or tick 'Random seed'")
    return whole(seed, "seed")


def build_settings(
    prompt: str,
    negative_prompt: str,
    seed: float | int | None,
    randomize_seed: bool,
    steps: float | int,
    cfg: float,
    lora_alpha: float,
    size: str,
    fit: str,
    frames: float | int,
    fps: float | int,
) -> Settings:
    width, height = parse_size(size)
    return Settings(
        prompt=(prompt or "").strip(),
        negative_prompt=(negative_prompt or "").strip(),
        seed=seed_value(seed, randomize_seed),
        steps=whole(steps, "steps"),
        cfg=float(cfg),
        lora_alpha=float(lora_alpha),
        width=width,
        height=height,
        num_frames=whole(frames, "num_frames"),
        fps=whole(fps, "fps"),
        fit=fit,
    )


@dataclass(frozen=True)
class SharedControls:
    """The settings accordion of one tab."""

    negative_prompt: gr.Textbox
    seed: gr.Number
    randomize_seed: gr.Checkbox
    steps: gr.Slider
    cfg: gr.Slider
    lora_alpha: gr.Slider
    size: gr.Dropdown
    fit: gr.Radio
    frames: gr.Slider
    fps: gr.Slider
    memory: gr.Markdown

    def inputs(self) -> list[gr.components.Component]:
        """In :data:`SHARED_NAMES` order."""
        return [getattr(self, name) for name in SHARED_NAMES]

    def model_default_targets(self) -> list[gr.components.Component]:
        """What changes when the model's own defaults become known."""
        return [self.steps, self.cfg, self.lora_alpha, self.size, self.frames, self.fps]

    def model_default_updates(self, defaults: Settings) -> list[Any]:
        return [
            gr.update(value=defaults.steps),
            gr.update(value=defaults.cfg),
            gr.update(value=defaults.lora_alpha),
            gr.update(choices=size_choices(defaults), value=size_text(defaults.width, defaults.height)),
            gr.update(value=defaults.num_frames),
            gr.update(value=defaults.fps),
        ]

    def values_from_settings(self, saved: dict[str, Any]) -> list[Any]:
        """Form values for :data:`SHARED_NAMES` from a saved ``settings`` dict (missing keys keep the form's value)."""
        known = {f.name for f in fields(Settings)}
        s = {k: v for k, v in saved.items() if k in known}
        size = size_text(s["width"], s["height"]) if "width" in s and "height" in s else gr.skip()
        seed = s.get("seed")
        return [
            s.get("negative_prompt", gr.skip()),
            seed if seed is not None else gr.skip(),
            False if seed is not None else gr.skip(),  # a saved seed reproduces the video only if it is used
            s.get("steps", gr.skip()),
            s.get("cfg", gr.skip()),
            s.get("lora_alpha", gr.skip()),
            size,
            s.get("fit", gr.skip()),
            s.get("num_frames", gr.skip()),
            s.get("fps", gr.skip()),
        ]


def prompt_box(placeholder: str, value: str = "") -> gr.Textbox:
    return gr.Textbox(label="Prompt", value=value, placeholder=placeholder, lines=3, max_lines=8)


def shared_controls(defaults: Settings) -> SharedControls:
    """The settings accordion; rendered where it is called."""
    # Steps and alpha are what users change most, so they stay in view; the rest folds away.
    with gr.Row():
        steps = gr.Slider(1, 50, value=defaults.steps, step=1, precision=0, label="Inference steps", info="10 is Pusa's default")
        lora_alpha = gr.Slider(
            0.1, 5.0, value=defaults.lora_alpha, step=0.1, label="LoRA alpha", info="Strength of the Pusa LoRA; 1.4 is Pusa's default"
        )
    with gr.Accordion("Settings: size, length, seed, guidance, negative prompt", open=False):
        with gr.Row():
            size = gr.Dropdown(
                size_choices(defaults),
                value=size_text(defaults.width, defaults.height),
                label="Size (width x height)",
                info="A preset, or type your own WIDTHxHEIGHT (multiples of 16)",
                allow_custom_value=True,
            )
            fit = gr.Radio(
                FIT_CHOICES, value=defaults.fit, label="Fit input images/video", info="Inputs of another shape are cropped or padded"
            )
        with gr.Row():
            frames = gr.Slider(
                5, 201, value=defaults.num_frames, step=4, precision=0, label="Frames",
                info="4k+1 frames (81 = 5 s at 16 fps)",
            )
            fps = gr.Slider(1, 60, value=defaults.fps, step=1, precision=0, label="Frames per second")
        with gr.Row():
            cfg = gr.Slider(1.0, 15.0, value=defaults.cfg, step=0.5, label="Guidance (CFG)", info="1 turns guidance off (twice as fast)")
            seed = gr.Number(value=0, precision=0, label="Seed", info="Used when 'Random seed' is off")
            randomize_seed = gr.Checkbox(value=True, label="Random seed", info="The seed used is shown with the video and saved")
        negative_prompt = gr.Textbox(label="Negative prompt", value=DEFAULT_NEGATIVE_PROMPT, lines=2, max_lines=6)
    memory = gr.Markdown()
    return SharedControls(negative_prompt, seed, randomize_seed, steps, cfg, lora_alpha, size, fit, frames, fps, memory)


@dataclass(frozen=True)
class OutputPanel:
    """Where a tab shows its result."""

    video: gr.Video
    settings_file: gr.File
    seed_used: gr.Number
    message: gr.Markdown
    reuse_seed: gr.Button

    def outputs(self) -> list[gr.components.Component]:
        return [self.video, self.settings_file, self.seed_used, self.message]


def output_panel(task: str) -> OutputPanel:
    video = gr.Video(label="Video", interactive=False, autoplay=True, loop=True, height=420, elem_id=f"{task}-video")
    with gr.Row():
        seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
        reuse_seed = gr.Button("Use this seed", size="md")
    settings_file = gr.File(label="Settings JSON", interactive=False)
    message = gr.Markdown(label="Message", elem_id=f"{task}-message")
    return OutputPanel(video, settings_file, seed_used, message, reuse_seed)


def wire_reuse_seed(panel: OutputPanel, controls: SharedControls) -> None:
    """'Use this seed' copies the seed of the last video into the form and turns 'Random seed' off."""

    def reuse(seed: int | None) -> tuple[Any, Any]:
        if seed is None:
            raise gr.Error("Seed used: there is no video yet; generate one first.", title="No seed yet")
        return seed, False

    panel.reuse_seed.click(
        reuse, [panel.seed_used], [controls.seed, controls.randomize_seed], queue=False, api_visibility="private"
    )


def job_size_reader(fn: Callable[..., Any]) -> Callable[..., JobSize]:
    """How ZeroGPU reads a job's size from a handler with ``size``, ``frames``, ``steps`` and ``cfg`` parameters."""
    signature = inspect.signature(fn)

    def read(*args: Any, **kwargs: Any) -> JobSize:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        width, height = parse_size(values["size"])
        return JobSize(int(values["steps"]), int(values["frames"]), width, height, float(values["cfg"]))

    return read


def existing_path(value: Any) -> str | None:
    """A saved input path if the file is still there (inputs live in gradio's cache, which is cleaned)."""
    if isinstance(value, str) and value and Path(value).is_file():
        return value
    return None


def comma_list(values: Sequence[Any]) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


@dataclass(frozen=True)
class TabForm:
    """What the app shell needs from a tab: its form, to fill it from saved settings and model defaults."""

    task: str
    label: str
    prompt: gr.Textbox
    task_inputs: list[gr.components.Component]
    task_values: Callable[[dict[str, Any]], list[Any]]  # saved request dict -> values for task_inputs
    controls: SharedControls
    noise_multiplier: gr.Slider | None = None  # the tab's model-dependent default besides the shared ones

    def fill_targets(self) -> list[gr.components.Component]:
        return [self.prompt, *self.task_inputs, *self.controls.inputs()]

    def fill_values(self, data: dict[str, Any]) -> list[Any]:
        saved = data.get("settings", {})
        return [saved.get("prompt", gr.skip()), *self.task_values(data), *self.controls.values_from_settings(saved)]

    def default_targets(self) -> list[gr.components.Component]:
        extra = [self.noise_multiplier] if self.noise_multiplier is not None else []
        return [*self.controls.model_default_targets(), *extra]

    def default_updates(self, defaults: Settings, noise_multiplier: float) -> list[Any]:
        extra = [gr.update(value=noise_multiplier)] if self.noise_multiplier is not None else []
        return [*self.controls.model_default_updates(defaults), *extra]
