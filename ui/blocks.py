"""The page: status line, model notice, 'load settings', and the four task tabs over one runner.

The page is served before the model is loaded: a ``gr.Timer`` polls the engine's status once a
second until it is ready (or failed), then stops and puts the model's own defaults into the forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from pusa_core.engine import Engine, EngineStatus
from pusa_core.errors import PusaInputError
from pusa_core.media import read_settings
from pusa_core.outputs import OutputFolder
from ui import i2v, multiframe, t2v, v2v
from ui.form import inside
from ui.runner import Runner, field_message
from ui.task_tab import TabForm, build_task_tab

SPECS = (i2v.SPEC, multiframe.SPEC, v2v.SPEC, t2v.SPEC)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
POLL_SECONDS = 1.0
# Gradio's cache of uploads and served files: every hour, drop what is older than a day.
CACHE_CLEANUP = (3600, 86400)
INTRO = (
    "# Pusa Studio\n"
    "Video generation with [Pusa V1.0](https://huggingface.co/RaphaelLiu/PusaV1): every latent frame gets its own "
    "noise level, so one model animates an image, joins keyframes, extends or completes a video, or starts from text."
)


def status_line(status: EngineStatus) -> str:
    model = f"{status.model_name}" + (" (small model)" if status.is_small else "")
    if status.state == "loading":
        return f"Status: **Loading** {model}: {status.message}. You can fill in the form now; Generate works once this says Ready."
    if status.state == "failed":
        return f"Status: **the model failed to load.** {status.message}"
    return f"Status: **Ready**: {model} · {status.placement}"


RESTORE_NOTE = " Input media recorded in this file was not brought back: upload it again."


def restorable_input(record: Any, outputs: OutputFolder) -> Path | None:
    """The server copy of a recorded input, only ever from this app's output folder.

    New settings record ``{"name", "sha256"}``; files written before that recorded a path, which
    comes back only when it resolves (links and ``..`` included) to a file inside the output folder.
    """
    if isinstance(record, dict):
        return outputs.find_input(record)
    if isinstance(record, str) and record and ".." not in Path(record).parts:
        path = Path(record)
        if inside(path, outputs.root) and path.is_file():
            return path
    return None


def _load_settings(forms: list[TabForm], outputs: OutputFolder, path: str | None) -> list[Any]:
    """Fill the tab that made an output from its MP4 or JSON, and switch to that tab."""
    targets = sum(len(form.components) for form in forms)
    if not path:
        return [gr.skip()] * (targets + 1) + [""]
    try:
        data = read_settings(path)
    except PusaInputError as err:
        raise gr.Error(field_message(err.field, err.message), title="Cannot load settings", print_exception=False) from None
    task = data.get("task") if isinstance(data, dict) else None
    form = next((f for f in forms if f.task == task), None)
    if form is None or not isinstance(data.get("settings"), dict):
        raise gr.Error(
            f"Settings file: {Path(path).name!r} has no task this app knows (got {task!r}); "
            "load an MP4 or JSON that Pusa Studio wrote.",
            title="Cannot load settings",
            print_exception=False,
        )
    values: list[Any] = []
    dropped = False
    for other in forms:
        if other is form:
            filled, dropped = other.fill_values(data, lambda record: restorable_input(record, outputs))
            values += filled
        else:
            values += [gr.skip()] * len(other.components)
    note = f"Loaded the settings of `{Path(path).name}` into {form.label} (seed {data['settings'].get('seed')})."
    return [*values, gr.Tabs(selected=form.task), note + (RESTORE_NOTE if dropped else "")]


def build_app(engine: Engine, notice: str = "", examples_dir: Path = EXAMPLES_DIR) -> gr.Blocks:
    """The Blocks for ``engine`` (started or not); ``notice`` is shown under the title (e.g. 'small model')."""
    runner = Runner(engine)
    status = engine.status()
    defaults = engine.defaults()
    noise_multiplier = engine.default_noise_multiplier()
    with gr.Blocks(title="Pusa Studio", delete_cache=CACHE_CLEANUP) as demo:
        gr.Markdown(INTRO)
        if notice:
            gr.Markdown(notice, elem_id="model-notice")
        status_md = gr.Markdown(status_line(status), elem_id="engine-status")
        timer = gr.Timer(POLL_SECONDS, active=status.state == "loading")
        applied = gr.State(status.state != "loading")
        with gr.Accordion("Load settings from an earlier output", open=False):
            settings_file = gr.File(label="An MP4 or JSON this app made", file_types=[".mp4", ".json"], type="filepath")
            load_message = gr.Markdown()
        forms = []
        with gr.Tabs() as tabs:
            for spec in SPECS:
                with gr.Tab(spec.label, id=spec.task):
                    forms.append(build_task_tab(spec, runner, defaults, noise_multiplier, examples_dir))

        default_targets = [c for form in forms for c in form.default_targets()]
        memory_lines = [form.controls.memory for form in forms]

        def refresh(already_applied: bool) -> list[Any]:
            """Status line; once the model is loaded, stop polling and put its defaults into the forms once."""
            current = engine.status()
            loading = current.state == "loading"
            out: list[Any] = [status_line(current), gr.Timer(active=loading)]
            if loading or already_applied or current.state == "failed":
                return out + [already_applied] + [gr.skip()] * (len(default_targets) + len(memory_lines))
            model_defaults = engine.defaults()
            multiplier = engine.default_noise_multiplier()
            for form in forms:
                out += form.default_updates(model_defaults, multiplier)
            size = f"{model_defaults.width}x{model_defaults.height}"
            memory = [runner.memory_line(size, model_defaults.num_frames, model_defaults.preset) for _ in forms]
            return out[:2] + [True] + out[2:] + memory

        refresh_outputs = [status_md, timer, applied, *default_targets, *memory_lines]
        demo.load(refresh, applied, refresh_outputs, api_visibility="private")
        timer.tick(refresh, applied, refresh_outputs, api_visibility="private")

        for form in forms:
            controls = form.controls
            sized = [controls.size, controls.frames, controls.preset]
            demo.load(runner.memory_line, sized, controls.memory, queue=False, api_visibility="private")
            for trigger in sized:
                trigger.change(runner.memory_line, sized, controls.memory, queue=False, api_visibility="private")

        fill_targets = [c for form in forms for c in form.components]
        settings_file.change(
            lambda path: _load_settings(forms, engine.outputs, path),
            settings_file,
            [*fill_targets, tabs, load_message],
            api_name="load_settings",
            api_visibility="undocumented",
        )
        # A closed tab or a dead client leaves a job nobody will receive: stop it at its next step.
        def leave(request: gr.Request) -> None:
            runner.leave(request.session_hash if request else None)

        demo.unload(leave)
    return demo
