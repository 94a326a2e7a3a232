"""The page: a one-line header (title and status) over an accordion (what Pusa is, the model notice, the
words a small model knows), 'load settings', the four task tabs over one runner, this page's batch
queue, and the history of the output folder (also served as ``/history``).

The page is served before the model is loaded: a ``gr.Timer`` polls the engine's status once a
second until it is ready (or failed), then stops and puts the model's own defaults into the forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from pusa_core.engine import Engine, EngineStatus
from pusa_core.errors import PusaInputError
from pusa_core.history import History
from pusa_core.media import read_settings
from pusa_core.outputs import OutputFolder
from ui import i2v, multiframe, t2v, v2v
from ui.batch import BatchQueue
from ui.batch_panel import queue_view, wire_batch, wire_queue_view
from ui.continue_video import wire_continue_api, wire_result_actions
from ui.examples import EXAMPLES_DIR, examples_for, words_markdown
from ui.form import inside
from ui.history import history_api, history_panel, wire_history
from ui.runner import Runner, field_message
from ui.task_tab import TabForm, build_task_tab

SPECS = (i2v.SPEC, multiframe.SPEC, v2v.SPEC, t2v.SPEC)

POLL_SECONDS = 1.0
# Gradio's cache of uploads and served files: every hour, drop what is older than a day.
CACHE_CLEANUP = (3600, 86400)
TITLE = "**Pusa Studio**"
INTRO = (
    "Video generation with [Pusa V1.0](https://huggingface.co/RaphaelLiu/PusaV1): every latent frame gets its own "
    "noise level, so one model animates an image, joins keyframes, extends or completes a video, or starts from text. "
    "Pick a tab, click an example beside its inputs, press Generate."
)


def status_line(status: EngineStatus) -> str:
    """The header's one line: the title, the state and the model (whose name says when it is a small one)."""
    if status.state == "loading":
        return (f"{TITLE} · **Loading** {status.model_name}: {status.message}. Fill in the form now; "
                "Generate works once this says Ready.")
    if status.state == "failed":
        return f"{TITLE} · **The model failed to load.** {status.message}"
    return f"{TITLE} · **Ready** · {status.model_name} · runs on {status.placement_kind or status.placement}"


def about_label(status: EngineStatus) -> str:
    if status.is_small:
        return f"About {status.model_name}: not Pusa 14B; the words it knows; how to get the real model"
    return "About Pusa Studio and this model"


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


def build_app(engine: Engine, notice: str = "", examples_dir: Path = EXAMPLES_DIR, max_queue: int | None = None) -> gr.Blocks:
    """The Blocks for ``engine`` (started or not); ``notice`` goes in the header's accordion (e.g. 'small model').

    ``examples_dir`` holds the 14B's example pictures; a small model's are drawn for it (see ui.examples).
    ``max_queue`` (the app's --max-queue) also bounds the batch jobs waiting across all visitors.
    """
    runner = Runner(engine)
    batches = BatchQueue(max_queue)
    history = History(engine.outputs)
    status = engine.status()
    defaults = engine.defaults()
    noise_multiplier = engine.default_noise_multiplier()
    examples = examples_for(engine, examples_dir)
    with gr.Blocks(title="Pusa Studio", delete_cache=CACHE_CLEANUP) as demo:
        status_md = gr.Markdown(status_line(status), elem_id="engine-status")
        with gr.Accordion(about_label(status), open=False, elem_id="about"):
            gr.Markdown(INTRO)
            if notice:
                gr.Markdown(notice, elem_id="model-notice")
            if examples.small:
                gr.Markdown(words_markdown(), elem_id="known-words")
        timer = gr.Timer(POLL_SECONDS, active=status.state == "loading")
        applied = gr.State(status.state != "loading")
        with gr.Accordion("Load settings from an earlier output", open=False):
            settings_file = gr.File(label="An MP4 or JSON this app made", file_types=[".mp4", ".json"], type="filepath")
            load_message = gr.Markdown()
        forms = []
        with gr.Tabs() as tabs:
            for spec in SPECS:
                with gr.Tab(spec.label, id=spec.task):
                    forms.append(build_task_tab(spec, runner, defaults, noise_multiplier, examples))

        wire_continue_api(next(form for form in forms if form.task == "v2v"), runner)

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

        view = queue_view()
        wire_queue_view(view, batches, runner)
        for form in forms:
            wire_batch(
                form.task, form.label, form.names, form.components, form.build_request, form.batch, form.panel,
                batches, runner, view,
            )

        with gr.Accordion("History: every video in the output folder", open=False, elem_id="history") as history_box:
            past = history_panel()
        wire_history(
            past, history, lambda path: _load_settings(forms, engine.outputs, path), [*fill_targets, tabs, past.message],
            # A new result in any tab, or opening the panel, reads the folder again.
            refresh_on=[history_box.expand, demo.load, *(form.panel.video.change for form in forms)],
        )
        gr.api(history_api(history), api_name="history", queue=False)
        wire_result_actions(forms, tabs, engine, also=[past])

        # A closed tab or a dead client leaves a job nobody will receive: stop it at its next step.
        def leave(request: gr.Request) -> None:
            runner.leave(request.session_hash if request else None)
            if request is not None and request.session_hash:
                batches.leave(request.session_hash)

        demo.unload(leave)
    return demo
