"""One builder for the four task tabs: a tab declares its inputs and how they become a request; this does the rest.

Every tab gets the same layout (task inputs with the examples beside them, shared settings, Generate
and Cancel on the left; the schedule picture, then the result, on the right, so the picture sits in
the same place on every tab), the same handler (one API endpoint named after the task, parameters
named after the inputs) and the same wiring (GPU queue, cancel, unload, schedule).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from pusa_core import facts
from pusa_core.cache_choice import offered_step_caches
from pusa_core.errors import PusaInputError
from pusa_core.requests import Request, Settings
from ui.batch_panel import BatchControls, batch_controls
from ui.examples import ExampleSet
from ui.form import build_settings, shared_values, skip_missing
from ui.runner import GPU_QUEUE, Outputs, Runner
from ui.schedule_plot import error_html, schedule_html
from ui.widgets import SHARED_NAMES, OutputPanel, SharedControls, output_panel, shared_controls, wire_preset, wire_reuse_seed

PREVIEW_SECONDS = 0.5  # how often the page fetches the latest step preview while a job runs
# What a tab's schedule picture shows: (positions, multipliers, source labels) from the tab's values
# (with "frames" and "fps" added); a PusaInputError is shown in the picture's place.
SchedulePlan = tuple[Any, Any, list[str] | None]


@dataclass(frozen=True)
class TaskInputs:
    """A tab's own components, created by its ``inputs`` function inside the tab's input column."""

    components: dict[str, gr.components.Component]  # handler parameter name -> component, in API order
    examples: list[list[Any]] = field(default_factory=list)  # rows over ``example_names``
    example_names: tuple[str, ...] = ()
    example_labels: list[str] | None = None
    shown: dict[str, gr.components.Component] = field(default_factory=dict)  # display-only parts the tab wires itself


@dataclass(frozen=True)
class TaskSpec:
    """Everything that differs between tabs."""

    task: str
    label: str
    doc: str  # the endpoint's description for API users
    inputs: Callable[[Settings, float, ExampleSet], TaskInputs]
    to_request: Callable[[dict[str, Any], Settings], Request]
    schedule: Callable[[dict[str, Any]], SchedulePlan]
    schedule_names: tuple[str, ...] = ()  # task inputs the picture depends on (frames and fps always)
    saved_values: Callable[[dict[str, Any], Callable[[Any], Path | None]], dict[str, Any]] = lambda data, find: {}
    # Wires the tab's own display parts to its inputs and the shared settings (frames, fps), once both exist.
    wire: Callable[[TaskInputs, SharedControls], None] | None = None
    results: Callable[[], Any] | None = None  # more of the result column, made under the output panel


@dataclass(frozen=True)
class TabForm:
    """What the app shell needs from a built tab: fill it from saved settings and model defaults."""

    spec: TaskSpec
    names: tuple[str, ...]  # every handler parameter, in order
    components: tuple[gr.components.Component, ...]
    controls: SharedControls
    noise_multiplier: gr.components.Component | None
    panel: OutputPanel
    job: Any  # the Generate job's event, for steps that follow a finished job
    batch: BatchControls  # wired by the page to its batch queue (ui.batch_panel.wire_batch)
    results: Any = None  # what ``spec.results`` made

    def component(self, name: str) -> gr.components.Component:
        return self.components[self.names.index(name)]

    def build_request(self, values: dict[str, Any]) -> Request:
        """The request these form values (keyed by handler parameter name) ask for."""
        return self.spec.to_request(values, build_settings(values))

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def label(self) -> str:
        return self.spec.label

    def fill_values(self, data: dict[str, Any], find_input: Callable[[Any], Path | None]) -> tuple[list[Any], bool]:
        """Form values from saved settings, and whether some recorded media could not be brought back."""
        values = {**self.spec.saved_values(data, find_input), **shared_values(data.get("settings", {}))}
        media = [name for name in ("image", "images", "video") if name in self.names and name in data]
        return skip_missing(self.names, values), any(name not in values for name in media)

    def default_targets(self) -> list[gr.components.Component]:
        extra = [self.noise_multiplier] if self.noise_multiplier is not None else []
        return [*self.controls.model_default_targets(), *extra]

    def default_updates(self, defaults: Settings, noise_multiplier: float) -> list[Any]:
        extra = [gr.update(value=noise_multiplier)] if self.noise_multiplier is not None else []
        return [*self.controls.model_default_updates(defaults), *extra]


def _handler(spec: TaskSpec, names: Sequence[str], runner: Runner) -> Callable[..., Any]:
    """One async handler whose signature names ``names``, so gradio_client callers pass them by keyword."""
    count = len(names)

    async def handler(*args: Any) -> Outputs:
        values = dict(zip(names, args[:count]))
        request, progress = args[count], args[count + 1]

        def build() -> Request:
            return spec.to_request(values, build_settings(values))

        return await runner.generate(build, request.session_hash if request else None, progress, tab=spec.task)

    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    parameters += [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request),
        inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()),
    ]
    handler.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__ = handler.__qualname__ = f"generate_{spec.task}"
    handler.__doc__ = (
        f"{spec.doc} `preset` is '{facts.QUALITY}' or '{facts.FAST}' (the LightX2V LoRA: send "
        f"steps={facts.FAST_STEPS} and cfg={facts.FAST_CFG:g} with it); "
        "`extra_loras` is 'name:weight, ...' over the LoRAs the app was started with. "
        f"`step_cache` is one of {', '.join(repr(v) for v in offered_step_caches())} (the settings whose quality "
        "checks passed; off with the Fast preset). "
        "Returns (video, settings JSON, seed used, message)."
    )
    return handler


def _draw(spec: TaskSpec, values: dict[str, Any], frames: Any, fps: Any) -> str:
    try:
        positions, multipliers, sources = spec.schedule({**values, "frames": frames, "fps": fps})
    except PusaInputError as err:
        return error_html(err)
    return schedule_html(frames, positions, multipliers, fps, sources=sources)


def build_task_tab(spec: TaskSpec, runner: Runner, defaults: Settings, noise_multiplier: float, examples: ExampleSet) -> TabForm:
    """Render ``spec``'s tab in the current ``gr.Tab`` and wire it to ``runner``."""
    with gr.Row():
        with gr.Column():
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=300):
                    own = spec.inputs(defaults, noise_multiplier, examples)
                if own.examples:
                    with gr.Column(scale=2, min_width=200, elem_id=f"{spec.task}-examples"):
                        gr.Examples(
                            examples=own.examples,
                            inputs=[own.components[name] for name in own.example_names],
                            example_labels=own.example_labels,
                            label="Examples: click one to fill the form, then Generate",
                            cache_examples=False,
                            run_on_click=False,
                        )
            controls = shared_controls(spec.task, defaults, runner.engine.fast_preset_problem(), runner.engine.status().is_small)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{spec.task}-generate")
                cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id=f"{spec.task}-cancel")
            # Cancel's answer has a place of its own: written into the result's message it could land after
            # the stopped job's own message and hide it.
            cancel_note = gr.Markdown(elem_id=f"{spec.task}-cancel-note")
            batch = batch_controls(spec.task)
        with gr.Column():
            initial = {name: own.components[name].value for name in spec.schedule_names}
            schedule = gr.HTML(_draw(spec, initial, defaults.num_frames, defaults.fps), elem_id=f"{spec.task}-schedule")
            panel = output_panel(spec.task)
            results = spec.results() if spec.results is not None else None

    shared = dict(zip(SHARED_NAMES, controls.inputs()))
    names = (*own.components, *SHARED_NAMES)
    components = tuple({**own.components, **shared}.values())
    busy = [gr.update(interactive=False), gr.update(interactive=True)]
    idle = [gr.update(interactive=True), gr.update(interactive=False)]
    # The page's own Generate asks for a step preview (API callers do not see one, so they do not pay for it).
    watch = gr.Timer(PREVIEW_SECONDS, active=False)

    def start(show: bool, request: gr.Request) -> list[Any]:
        session = request.session_hash if request else None
        runner.want_preview(session, bool(show))
        runner.waiting(session, spec.task)
        return [*busy, gr.Timer(active=bool(show)), gr.update(value=None, visible=bool(show)), ""]

    def finish(request: gr.Request) -> list[Any]:
        runner.settled(request.session_hash if request else None, spec.task)
        return [*idle, gr.Timer(active=False), gr.update(visible=False)]

    toggles = [generate, cancel, watch, panel.preview]
    started = generate.click(start, panel.show_preview, [*toggles, cancel_note], queue=False, api_visibility="private")
    job = started.then(
        _handler(spec, names, runner), list(components), panel.outputs(),
        api_name=spec.task, concurrency_id=GPU_QUEUE, concurrency_limit=1,
    )
    job.then(finish, None, toggles, queue=False, api_visibility="private")
    # gradio 6.31 does not run .then() after an event that raised, so a refused job resets the page here.
    job.failure(finish, None, toggles, queue=False, api_visibility="private")

    def show_latest(request: gr.Request) -> Any:
        strip = runner.latest_preview(request.session_hash if request else None, spec.task)
        return gr.skip() if strip is None else strip

    watch.tick(show_latest, None, panel.preview, queue=False, api_visibility="private")

    def cancel_job(request: gr.Request) -> str:
        return runner.cancel(request.session_hash if request else None, spec.task)

    # Outside the queue: a full queue must not stop anyone from cancelling.
    cancel.click(cancel_job, None, cancel_note, queue=False, api_visibility="private")
    if spec.task == "t2v":  # one API endpoint for scripts, whatever task their job runs

        def cancel_all(request: gr.Request) -> str:
            """Stop every job of this session (client) at its next denoising step, or before it starts."""
            return runner.cancel(request.session_hash if request else None, None)

        gr.Button(visible=False).click(cancel_all, None, panel.message, queue=False, api_name="cancel")
    wire_reuse_seed(panel, controls)
    wire_preset(controls, runner.engine.preset_defaults)

    schedule_inputs = [*(own.components[n] for n in spec.schedule_names), controls.frames, controls.fps]

    def draw(*values: Any) -> str:
        return _draw(spec, dict(zip(spec.schedule_names, values)), values[-2], values[-1])

    for trigger in schedule_inputs:
        trigger.change(draw, schedule_inputs, schedule, queue=False, api_visibility="private")
    if spec.wire is not None:
        spec.wire(own, controls)
    noise = own.components.get("noise_multiplier")
    return TabForm(spec, names, components, controls, noise, panel, job, batch, results)
