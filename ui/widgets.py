"""Widgets every tab shares: the settings accordion, the output panel, and inputs that leave checks to the engine.

Gradio checks a slider's range and opens an uploaded image before the handler runs, and answers a bad
value with its own message ("Value 0 is less than minimum value 1.", or a traceback naming a server
temp path). The subclasses here pass the raw value on, so every refusal is the engine's: it names
the field and the fix, and the limits are the ones in :mod:`pusa_core.facts`, shown by the sliders too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pusa_core import facts
from pusa_core.cache_choice import offered_step_caches
from pusa_core.requests import DEFAULT_NEGATIVE_PROMPT, Settings
from ui.form import EXTRA_LORAS_EXAMPLE, format_extra_loras

SIZE_PRESETS: tuple[tuple[str, str], ...] = (
    ("832x480 · landscape (Wan's size)", "832x480"),
    ("480x832 · portrait", "480x832"),
    ("1280x720 · landscape HD", "1280x720"),
    ("720x1280 · portrait HD", "720x1280"),
    ("624x624 · square", "624x624"),
)
FIT_CHOICES = [("Crop to fill", "crop"), ("Pad with black bars", "pad")]
PRESET_CHOICES = [
    ("Quality · the model's own steps and guidance", facts.QUALITY),
    (f"Fast · LightX2V, {facts.FAST_STEPS} steps, no guidance", facts.FAST),
]
# Transformer passes of a default job under each preset: steps, times two while guidance is on.
QUALITY_PASSES = facts.DEFAULT_STEPS * (1 if facts.DEFAULT_CFG == 1 else 2)
FAST_PASSES = facts.FAST_STEPS * (1 if facts.FAST_CFG == 1 else 2)
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp"]
VIDEO_TYPES = [".mp4", ".mov", ".webm", ".mkv"]


def _as_sent(self: gr.components.Component, payload: Any) -> Any:
    """A ``preprocess`` that leaves the value as the caller sent it, for the engine to check."""
    return payload


# is_template: the front end renders each one as its parent component.
class EngineCheckedSlider(gr.Slider):
    """A slider whose API value reaches the engine, so 0 or 1000 gets its message."""

    is_template, preprocess = True, _as_sent


class EngineCheckedNumber(gr.Number):
    """A number box that passes None, text and NaN on for the engine to refuse."""

    is_template, preprocess = True, _as_sent


class EngineCheckedRadio(gr.Radio):
    """A radio whose unknown values reach the engine, which names the choices."""

    is_template, preprocess = True, _as_sent


class EngineCheckedDropdown(gr.Dropdown):
    """A dropdown whose unknown values reach the engine, which names the choices."""

    is_template, preprocess = True, _as_sent


class ImageUpload(gr.Image):
    """An image upload handed on as the cached file's path, unopened: the engine reads it within its limits."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        if payload is None or getattr(payload, "path", None) is None:
            return super().preprocess(payload)
        return str(payload.path)


def limit_slider(limit: facts.Limit, value: float, label: str, info: str, **kwargs: Any) -> gr.Slider:
    return EngineCheckedSlider(
        limit.low, limit.high, value=value, step=limit.step, label=label, info=info,
        precision=0 if limit.whole else None, **kwargs,
    )


def size_text(width: int, height: int) -> str:
    return f"{width}x{height}"


def size_choices(defaults: Settings) -> list[tuple[str, str]]:
    """The presets, with the model's own size first when it is not one of them (the small model's)."""
    own = size_text(defaults.width, defaults.height)
    if any(value == own for _, value in SIZE_PRESETS):
        return list(SIZE_PRESETS)
    return [(f"{own} · this model's own size", own), *SIZE_PRESETS]


# Order of the shared values in every handler's signature, after the task's own inputs.
SHARED_NAMES = (
    "negative_prompt", "seed", "randomize_seed", "steps", "cfg", "lora_alpha", "size", "fit", "frames", "fps", "preset",
    "extra_loras", "step_cache",
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
    preset: gr.Radio
    extra_loras: gr.Textbox
    step_cache: gr.Dropdown
    memory: gr.Markdown

    def inputs(self) -> list[gr.components.Component]:
        """In :data:`SHARED_NAMES` order."""
        return [getattr(self, name) for name in SHARED_NAMES]

    def model_default_targets(self) -> list[gr.components.Component]:
        """What changes when the model's own defaults become known."""
        return [self.preset, self.steps, self.cfg, self.lora_alpha, self.size, self.frames, self.fps]

    def model_default_updates(self, defaults: Settings) -> list[Any]:
        return [
            gr.update(value=defaults.preset),
            gr.update(value=defaults.steps),
            gr.update(value=defaults.cfg),
            gr.update(value=defaults.lora_alpha),
            gr.update(choices=size_choices(defaults), value=size_text(defaults.width, defaults.height)),
            gr.update(value=defaults.num_frames),
            gr.update(value=defaults.fps),
        ]


def prompt_box(task: str, placeholder: str, value: str = "") -> gr.Textbox:
    return gr.Textbox(
        label="Prompt", value=value, placeholder=placeholder, lines=3, max_lines=8, max_length=facts.MAX_PROMPT_CHARS,
        elem_id=f"{task}-prompt",
    )


SMALL_MODEL_WHY = "it was trained on 64x64 clips of 17 frames at 8 fps, and evaluated at these settings"


def default_note(value: float, pusa: float, small: bool, preset: str = facts.QUALITY) -> str:
    """Where a shown default comes from, saying why when it is not Pusa's own."""
    if value == pusa:
        return f"{pusa:g} is Pusa's default"
    if small:
        return f"{value:g} is the small model's default; Pusa 14B uses {pusa:g}"
    if preset == facts.FAST:
        return f"{value:g} is the Fast preset's; Pusa 14B's Quality uses {pusa:g}"
    return f"{value:g} is this model's default; Pusa 14B uses {pusa:g}"


STEPS_HELP = "Few steps: blurry, unfinished shapes and motion; more: finer detail, each step costs the same time again"
ALPHA_HELP = (
    "Strength of Pusa's per-frame LoRA. Too low (toward 0, plain Wan): the per-frame conditioning is weak, the video "
    "drifts away from your input frames; too high (past about 2): artefacts, overcooked colours, stiff motion"
)
CFG_HELP = (
    "How closely the video follows the prompt. 1: no guidance, twice as fast, follows it loosely; high (past about 8): "
    "oversaturated, overcooked colours"
)
NOISE_HELP = (
    "How far the video may depart from the image. 0: kept exactly as frame 0 (the motion after it may start abruptly); "
    "low (0.1-0.3): faithful but blends in; 1: the image is ignored"
)
MULTIPLIERS_HELP = "Noise per input, one per position: 0 keeps it exactly, low (0.2) keeps it but lets it blend, 1 ignores it"


def _extra_loras_info(loaded: dict[str, float]) -> str:
    if not loaded:
        return "None loaded; start the app with --extra-lora PATH[:WEIGHT] to stack a style or motion LoRA"
    return (f"LoRAs loaded with --extra-lora, as name:weight (leave one out to turn it off): "
            f"{', '.join(loaded)}; e.g. {EXTRA_LORAS_EXAMPLE}")


def shared_controls(task: str, defaults: Settings, fast_problem: str | None = None, small: bool = False) -> SharedControls:
    """The settings accordion under the preset choice; rendered where it is called.

    ``fast_problem``: why the Fast preset cannot run here (and the command that fixes it), shown under the choice.
    ``small``: the defaults are a small model's own, and the help says so where they differ from Pusa's.
    """
    why = f" ({SMALL_MODEL_WHY})" if small else ""
    preset = EngineCheckedRadio(
        PRESET_CHOICES, value=defaults.preset, label="Preset",
        info=f"Fast stacks the LightX2V LoRA on Pusa's: {FAST_PASSES} transformer passes instead of {QUALITY_PASSES} "
        "at Pusa's defaults; choosing one sets the steps and guidance below",
    )
    if fast_problem:
        gr.Markdown(f"⚠️ {fast_problem[:1].upper()}{fast_problem[1:]}.", elem_classes="preset-note")
    # Steps and alpha are what users change most, so they stay in view; the rest folds away.
    with gr.Row():
        steps = limit_slider(
            facts.STEPS, defaults.steps, "Inference steps",
            f"{STEPS_HELP} ({default_note(defaults.steps, facts.DEFAULT_STEPS, small, defaults.preset)})",
            elem_id=f"{task}-steps",
        )
        lora_alpha = limit_slider(
            facts.LORA_ALPHA, defaults.lora_alpha, "LoRA alpha",
            f"{ALPHA_HELP} ({default_note(defaults.lora_alpha, facts.DEFAULT_ALPHA, small)})", elem_id=f"{task}-alpha",
        )
    with gr.Accordion("Settings: size, length, seed, guidance, negative prompt", open=False, elem_id=f"{task}-settings"):
        with gr.Row():
            size = gr.Dropdown(
                size_choices(defaults),
                value=size_text(defaults.width, defaults.height),
                label="Size (width x height)",
                info=f"A preset, or type your own WIDTHxHEIGHT (multiples of {facts.SIZE_MULTIPLE})"
                + (f"; {size_text(defaults.width, defaults.height)} is the small model's own size, Pusa 14B uses "
                   f"{size_text(facts.DEFAULT_WIDTH, facts.DEFAULT_HEIGHT)}{why}" if small else ""),
                allow_custom_value=True,
            )
            fit = EngineCheckedRadio(
                FIT_CHOICES, value=defaults.fit, label="Fit input images/video", info="Inputs of another shape are cropped or padded"
            )
        with gr.Row():
            frames = limit_slider(
                facts.FRAMES, defaults.num_frames, "Frames",
                f"4k+1 frames; more frames, a longer video and a longer wait "
                f"({default_note(defaults.num_frames, facts.DEFAULT_FRAMES, small)}{why})",
            )
            fps = limit_slider(
                facts.FPS, defaults.fps, "Frames per second",
                f"Playback rate: low is choppy, high is smooth but shorter for the same frames "
                f"({default_note(defaults.fps, facts.DEFAULT_FPS, small)}, Wan's native rate)",
            )
        with gr.Row():
            cfg = limit_slider(
                facts.CFG, defaults.cfg, "Guidance (CFG)",
                f"{CFG_HELP} ({default_note(defaults.cfg, facts.DEFAULT_CFG, small, defaults.preset)})", elem_id=f"{task}-cfg",
            )
            seed = EngineCheckedNumber(
                value=0, precision=0, label="Seed", info="Used when 'Random seed' is off", elem_id=f"{task}-seed"
            )
            randomize_seed = gr.Checkbox(
                value=True, label="Random seed", info="The seed used is shown with the video and saved",
                elem_id=f"{task}-random-seed",
            )
        negative_prompt = gr.Textbox(
            label="Negative prompt", value=DEFAULT_NEGATIVE_PROMPT, lines=2, max_lines=6, max_length=facts.MAX_PROMPT_CHARS
        )
        extra_loras = gr.Textbox(
            label="Extra LoRAs", value=format_extra_loras(dict(defaults.extra_loras)),
            placeholder=EXTRA_LORAS_EXAMPLE, info=_extra_loras_info(dict(defaults.extra_loras)),
        )
        step_cache = EngineCheckedDropdown(
            list(offered_step_caches()), value=defaults.step_cache, label="Step cache",
            info="Skip transformer work between similar steps (diffusers' cache hooks); only settings whose quality "
            f"checks passed on the small model are listed; needs {facts.MIN_CACHED_STEPS}+ steps, not the Fast preset",
            elem_id=f"{task}-step-cache",
        )
    memory = gr.Markdown()
    return SharedControls(
        negative_prompt, seed, randomize_seed, steps, cfg, lora_alpha, size, fit, frames, fps, preset, extra_loras,
        step_cache, memory,
    )


def wire_preset(controls: SharedControls, preset_defaults: Callable[[str], Settings]) -> None:
    """Choosing a preset on the page sets the steps, guidance and step cache it runs at (the API sends its own)."""

    def choose(preset: str) -> tuple[Any, Any, Any]:
        if preset not in facts.PRESETS:
            return gr.skip(), gr.skip(), gr.skip()
        s = preset_defaults(preset)
        return s.steps, s.cfg, s.step_cache

    controls.preset.input(choose, controls.preset, [controls.steps, controls.cfg, controls.step_cache], queue=False,
                          api_visibility="private")


@dataclass(frozen=True)
class OutputPanel:
    """Where a tab shows its result."""

    video: gr.Video
    settings_file: gr.File
    seed_used: gr.Number
    message: gr.Markdown
    reuse_seed: gr.Button
    show_preview: gr.Checkbox
    preview: gr.Image
    continue_video: gr.Button  # these three are wired by ui.continue_video, enabled once there is a video
    use_last_frame: gr.Button
    use_as_keyframe: gr.Button

    def outputs(self) -> list[gr.components.Component]:
        return [self.video, self.settings_file, self.seed_used, self.message]


def output_panel(task: str) -> OutputPanel:
    with gr.Row():
        show_preview = gr.Checkbox(
            value=True, label="Watch it form", elem_id=f"{task}-show-preview",
            info="A picture of the clean estimate after each step (first, middle and last frames)",
        )
    preview = gr.Image(
        label="Forming", interactive=False, visible=False, height=120, elem_id=f"{task}-preview", show_label=True,
    )
    video = gr.Video(label="Video", interactive=False, autoplay=True, loop=True, height=420, elem_id=f"{task}-video")
    with gr.Row():
        seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
        reuse_seed = gr.Button("Use this seed", size="md", interactive=False, elem_id=f"{task}-reuse-seed")
    with gr.Row():
        continue_video = gr.Button("Continue this video", size="md", interactive=False, elem_id=f"{task}-continue")
        use_last_frame = gr.Button("Use last frame", size="md", interactive=False, elem_id=f"{task}-use-last-frame")
        use_as_keyframe = gr.Button("Use as keyframe", size="md", interactive=False, elem_id=f"{task}-use-keyframe")
    settings_file = gr.File(label="Settings JSON", interactive=False)
    message = gr.Markdown(label="Message", elem_id=f"{task}-message")
    return OutputPanel(
        video, settings_file, seed_used, message, reuse_seed, show_preview, preview, continue_video, use_last_frame,
        use_as_keyframe,
    )


def wire_reuse_seed(panel: OutputPanel, controls: SharedControls) -> None:
    """'Use this seed' copies the seed of the last video into the form; it is enabled only once there is one."""

    def reuse(seed: int | None) -> tuple[Any, Any]:
        if seed is None:
            raise gr.Error("Seed used: there is no video yet; generate one first.", title="No seed yet")
        return seed, False

    panel.seed_used.change(
        lambda seed: gr.update(interactive=seed is not None), panel.seed_used, panel.reuse_seed,
        queue=False, api_visibility="private",
    )
    panel.reuse_seed.click(
        reuse, [panel.seed_used], [controls.seed, controls.randomize_seed], queue=False, api_visibility="private"
    )
