"""Keep working on a result: 'Continue this video', 'Use last frame', 'Use as keyframe', and the `/continue` API.

Continue fills Video-to-Video with the result as its input, its last frames at the first latent slots
(the last 13 at 0,1,2,3) and the result's own prompt and settings, and remembers which output it
continues: when that job finishes, the original and the new part are joined, the repeated frames
dropped, and the joined MP4 is shown and offered beside the new part. Continuing the joined video
again makes it longer each time. Every action reads only this app's own outputs, found by file name
in the output folder (:func:`pusa_core.continuation.find_output`), never by a path the page sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.utils import get_upload_folder
from PIL import Image

from pusa_core.conditioning import parse_multipliers, parse_positions
from pusa_core.continuation import JoinedVideo, check_continuation, find_output, last_frame, plan_for_video
from pusa_core.engine import Engine
from pusa_core.errors import PusaInputError
from pusa_core.media import read_settings
from pusa_core.requests import Request, VideoToVideo
from ui.form import build_settings, comma_list, shared_values, skip_missing
from ui.runner import GPU_QUEUE, Runner, field_message, input_error
from ui.task_tab import TabForm
from ui.widgets import SHARED_NAMES

log = logging.getLogger(__name__)

FRAMES_FOLDER = "pusa-frames"  # last frames saved for Multi-Frames, in gradio's cache (cleaned with it)
CONTINUE_NAMES = ("output", "video", "prompt", "positions", "multipliers", *SHARED_NAMES)


@dataclass(frozen=True)
class JoinedResults:
    """The Video-to-Video result column's part for continuations."""

    continuing: gr.State  # output-folder name of the video being continued; None for a plain job
    note: gr.Markdown
    video: gr.Video
    file: gr.File


def joined_results() -> JoinedResults:
    """Made under Video-to-Video's output panel; hidden until a continuation is joined."""
    continuing = gr.State(None)
    note = gr.Markdown(elem_id="v2v-continuing")
    video = gr.Video(
        label="Joined video: the original, then the new part", interactive=False, visible=False, loop=True,
        height=420, elem_id="v2v-joined",
    )
    file = gr.File(label="Joined MP4", interactive=False, visible=False, elem_id="v2v-joined-file")
    return JoinedResults(continuing, note, video, file)


def _hidden() -> Any:
    return gr.update(value=None, visible=False)


def _own_output(engine: Engine, value: Any) -> Path:
    """The output-folder file the page's video stands for (the page holds a served copy with the same name)."""
    name = Path(value).name if isinstance(value, str) and value else value
    try:
        return find_output(engine.outputs, name)
    except PusaInputError as err:
        raise input_error(err) from None


def continue_values(engine: Engine, v2v: TabForm, original: Path) -> tuple[list[Any], str]:
    """Video-to-Video's form values continuing ``original`` with its own prompt and settings, and a note."""
    beside = original.with_suffix(".json")
    data = read_settings(beside if beside.is_file() else original)
    saved = data.get("settings") if isinstance(data, dict) and isinstance(data.get("settings"), dict) else {}
    # The seed is left to the form: the same seed would start the new part from the original's noise.
    values = {k: v for k, v in shared_values(saved).items() if k not in ("seed", "randomize_seed")}
    defaults = engine.defaults()
    new_frames = int(saved.get("num_frames", defaults.num_frames))
    plan = plan_for_video(original, float(saved.get("fps", defaults.fps)), new_frames)
    values.update(
        video=str(original), frames_from="last", positions=comma_list(plan.positions),
        multipliers=comma_list(plan.multipliers),
    )
    note = (
        f"Continuing `{original.name}`: its last {plan.overlap} frames become the first {plan.overlap} of the new part "
        f"(positions {comma_list(plan.positions)}). Press Generate; the joined video appears here."
    )
    return skip_missing(v2v.names, values), note


def frame_file(frame: np.ndarray, stem: str) -> Path:
    """``frame`` as a PNG in gradio's cache, named after its video (one file per content)."""
    image = Image.fromarray(frame)
    digest = hashlib.sha256(frame.tobytes()).hexdigest()[:16]
    folder = Path(get_upload_folder()) / FRAMES_FOLDER / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_last.png"
    if not path.is_file():
        image.save(path)
    return path


def joined_note(joined: JoinedVideo) -> str:
    return (
        f"Joined: `{joined.video_path.name}`, {joined.num_frames} frames ({joined.num_frames / joined.fps:.1f} s) = "
        f"{joined.original_frames} of the original + {joined.new_frames} new - {joined.overlap} repeated."
    )


def wire_result_actions(forms: Sequence[TabForm], tabs: gr.Tabs, engine: Engine, also: Sequence[Any] = ()) -> None:
    """The three buttons under every result, and Video-to-Video's join after a continuation.

    ``also``: more places showing one of this app's videos with the same three buttons (the History
    panel): anything with ``video``, ``continue_video``, ``use_last_frame`` and ``use_as_keyframe``.
    """
    by_task = {form.task: form for form in forms}
    v2v, i2v, multiframe = by_task["v2v"], by_task["i2v"], by_task["multiframe"]
    joined: JoinedResults = v2v.results

    def prefill(video: Any, joined_video: Any = None) -> list[Any]:
        original = _own_output(engine, joined_video or video)
        try:
            values, note = continue_values(engine, v2v, original)
        except PusaInputError as err:
            raise input_error(err) from None
        return [*values, original.name, note, _hidden(), _hidden(), gr.Tabs(selected="v2v")]

    def use_last_frame(video: Any) -> list[Any]:
        return [last_frame(_own_output(engine, video)), gr.Tabs(selected="i2v")]

    def use_as_keyframe(video: Any, images: Any) -> list[Any]:
        source = _own_output(engine, video)
        current = [str(getattr(item, "name", item)) for item in images or []]
        gr.Info(f"Added the last frame of {source.name} as image {len(current) + 1}; give it a position.")
        return [[*current, str(frame_file(last_frame(source), source.stem))], gr.Tabs(selected="multiframe")]

    prefill_targets = [*v2v.components, joined.continuing, joined.note, joined.video, joined.file, tabs]
    for panel in [*(form.panel for form in forms), *also]:
        buttons = [panel.continue_video, panel.use_last_frame, panel.use_as_keyframe]
        panel.video.change(
            lambda value: [gr.update(interactive=bool(value))] * 3, panel.video, buttons, queue=False,
            api_visibility="private",
        )
        # On Video-to-Video, a joined result is what "continue" means: the whole video so far.
        sources = [panel.video, joined.video] if panel is v2v.panel else [panel.video]
        panel.continue_video.click(prefill, sources, prefill_targets, api_visibility="private")
        panel.use_last_frame.click(
            use_last_frame, panel.video, [i2v.component("image"), tabs], api_visibility="private"
        )
        panel.use_as_keyframe.click(
            use_as_keyframe, [panel.video, multiframe.component("images")], [multiframe.component("images"), tabs],
            api_visibility="private",
        )

    def join_after(continuing: str | None, part: Any) -> list[Any]:
        if not continuing:
            return [_hidden(), _hidden(), gr.skip()]
        if not part:  # cancelled: nothing to join; the next Generate continues the same video
            return [gr.skip()] * 3
        try:
            result = engine.join(find_output(engine.outputs, continuing), _own_output(engine, part))
        except PusaInputError as err:
            return [_hidden(), _hidden(), f"Not joined: {field_message(err.field, err.message)}"]
        path = str(result.video_path)
        return [gr.update(value=path, visible=True), gr.update(value=path, visible=True), joined_note(result)]

    v2v.job.then(
        join_after, [joined.continuing, v2v.panel.video], [joined.video, joined.file, joined.note],
        api_visibility="private",
    )
    # Another upload is a new video: its result is not joined to the one continued before.
    forget = lambda: [None, ""]  # noqa: E731
    video_input = v2v.component("video")
    for event in (video_input.upload, video_input.clear):
        event(forget, None, [joined.continuing, joined.note], queue=False, api_visibility="private")


def wire_continue_api(v2v: TabForm, runner: Runner) -> None:
    """``/continue``: continue an output by name, or an uploaded video, and return it joined and the new part."""
    engine = runner.engine
    output = gr.Textbox(visible=False, label="output")
    video = gr.Video(visible=False, label="video")
    prompt = gr.Textbox(visible=False, label="prompt")
    positions = gr.Textbox(visible=False, value="", label="positions")
    multipliers = gr.Textbox(visible=False, value="", label="multipliers")
    components = [output, video, prompt, positions, multipliers, *v2v.controls.inputs()]
    trigger = gr.Button(visible=False)
    count = len(CONTINUE_NAMES)

    async def handler(*args: Any) -> tuple[Any, ...]:
        values = dict(zip(CONTINUE_NAMES, args[:count]))
        request, progress = args[count], args[count + 1]
        original: list[Path] = []

        def build() -> Request:
            source = _continue_source(engine, values)
            settings = build_settings(values)
            if _blank(values["positions"]) and _blank(values["multipliers"]):
                plan = plan_for_video(source, settings.fps, settings.num_frames, field="video" if values["video"] else "output")
                chosen, weights = plan.positions, plan.multipliers
            else:
                chosen = parse_positions(values["positions"], "positions")
                weights = parse_multipliers(values["multipliers"], "multipliers")
            check_continuation("last", chosen, settings.num_frames)
            original.append(source)
            return VideoToVideo(settings, video=str(source), positions=chosen, multipliers=weights, frames_from="last")

        part, settings_path, seed, message = await runner.generate(
            build, request.session_hash if request else None, progress, tab="continue"
        )
        if part is None:  # cancelled
            return None, None, None, None, message
        try:
            result = await asyncio.to_thread(engine.join, original[0], Path(part))
        except Exception as err:  # the new part is saved; say so rather than lose it
            log.exception("join failed")
            raise gr.Error(f"The new part {Path(part).name} was saved, but joining failed: {err}", title="Join failed") from None
        return str(result.video_path), part, str(result.settings_path), seed, f"{message} {joined_note(result)}"

    _name_parameters(handler, CONTINUE_NAMES, "continue_video")
    handler.__doc__ = (
        "Continue a video: `output` is the file name of a video this app made (as a call returned it), or upload "
        "`video` instead. Its last frames condition the new part (positions and multipliers left empty: its last 13 "
        "frames at 0,1,2,3, multipliers 0,0.3,0.4,0.5); the rest are /v2v's settings. Returns (joined video, new part, "
        "settings JSON of the joined video, seed used, message). Pass the joined video's name as `output` to go on."
    )
    trigger.click(
        handler, components, [gr.Video(visible=False), gr.Video(visible=False), gr.File(visible=False),
                              gr.Number(visible=False), gr.Markdown(visible=False)],
        api_name="continue", concurrency_id=GPU_QUEUE, concurrency_limit=1,
    )


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _continue_source(engine: Engine, values: dict[str, Any]) -> Path:
    name, upload = values["output"], values["video"]
    if not _blank(name) and upload:
        raise PusaInputError("output", "is given and so is video; give the name of an output, or upload a video, not both")
    if upload:
        return Path(upload)
    return find_output(engine.outputs, name)


def _name_parameters(handler: Callable[..., Any], names: Sequence[str], name: str) -> None:
    """Give ``handler(*args)`` a signature naming ``names``, so gradio_client callers pass them by keyword.

    Each defaults to None, so a caller may leave out one whose component has no value (``video``, when an
    ``output`` is named); the others default to their component's value.
    """
    parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in names]
    parameters += [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request),
        inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()),
    ]
    handler.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__ = handler.__qualname__ = name
