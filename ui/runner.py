"""The one bridge from the UI to the engine: readiness, progress, cancel and error messages.

Every tab hands :meth:`Runner.generate` a function that builds its typed request; the runner turns
the engine's exceptions into ``gr.Error`` messages that name the form field and the fix, its
``Progress`` into ``gr.Progress`` with an ETA, and a Cancel click into the engine's cancel event.
Nothing here stops the app: after any error the engine is ready for the next job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from pusa_core import facts
from pusa_core.engine import Engine, GenerationResult, OutOfMemory, Progress
from pusa_core.errors import EngineNotReady, GenerationCancelled, JobTimedOut, PusaInputError
from pusa_core.parallel import RankFailed, RanksOutOfStep
from pusa_core.requests import Request, Settings
from ui.form import parse_size
from ui.zerogpu import ZeroGpuJob, wrap_for_zerogpu

log = logging.getLogger(__name__)

# Engine field names -> the labels the form shows.
FIELD_LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "image": "Image",
    "images": "Images",
    "video": "Video",
    "noise_multiplier": "Noise multiplier",
    "positions": "Positions",
    "multipliers": "Multipliers",
    "steps": "Inference steps",
    "cfg": "Guidance (CFG)",
    "lora_alpha": "LoRA alpha",
    "width": "Size (width)",
    "height": "Size (height)",
    "size": "Size",
    "num_frames": "Frames",
    "fps": "Frames per second",
    "fit": "Fit",
    "seed": "Seed",
    "randomize_seed": "Random seed",
    "settings file": "Settings file",
    "preset": "Preset",
    "extra_loras": "Extra LoRAs",
    "frames_from": "Take the frames from",
    "output": "Output",
    "step_cache": "Step cache",
}
PHASE_LABELS = {
    "prompt": "Encoding the prompt",
    "inputs": "Encoding the input frames",
    "denoise": "Denoising",
    "decode": "Decoding the frames",
    "write": "Writing the MP4",
}
GPU_QUEUE = "gpu"  # every tab's Generate shares this queue: one engine, one job at a time
NO_SESSION = "no-session"  # direct calls without a gradio request share one cancel slot
# A session's jobs are kept per tab (or "batch", "continue"): one page may have a job in every tab,
# and each tab's Cancel must stop its own.
Slot = tuple[str, str]


def _slot(session: str | None, tab: str) -> Slot:
    return session or NO_SESSION, tab

Outputs = tuple[str | None, str | None, int | None, str]


def field_label(field: str) -> str:
    """``images[2]`` -> ``Images (image 2)``; unknown fields keep their own name."""
    base, _, rest = field.partition("[")
    label = FIELD_LABELS.get(base, field)
    return f"{label} (image {rest.rstrip(']')})" if rest and base == "images" else label


def field_message(field: str, message: str) -> str:
    """``("prompt", "is empty; ...")`` -> ``"Prompt is empty; ..."``; other messages follow a colon."""
    label = field_label(field)
    joins_as_sentence = message.split(" ", 1)[0] in ("is", "are", "has", "have", "must", "needs")
    return f"{label} {message}" if joins_as_sentence else f"{label}: {message}"


def input_error(err: PusaInputError) -> gr.Error:
    return gr.Error(field_message(err.field, err.message), title=f"Check “{field_label(err.field)}”", print_exception=False)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    return f" · about {seconds // 60}:{seconds % 60:02d} left" if seconds >= 60 else f" · about {seconds} s left"


def progress_text(p: Progress) -> str:
    label = PHASE_LABELS.get(p.phase, p.phase)
    if p.step is not None and p.total:
        return f"{label}: step {p.step}/{p.total}{format_eta(p.eta_seconds)}"
    return label


def describe_result(result: GenerationResult, fps: int | float) -> str:
    done = (
        f"Done in {result.seconds:.1f} s: {result.num_frames} frames of {result.width}x{result.height} at {fps:g} fps "
        f"({result.num_frames / fps:.1f} s), seed {result.seed}. Saved as `{result.video_path.name}`."
    )
    return " ".join([done, *(f"{note}." for note in result.notes)])


@dataclass
class _Job:
    cancel: threading.Event
    last: Progress | None = None
    left: bool = False  # the caller went away (closed the tab, killed the client, cancelled the event)
    preview: np.ndarray | None = None  # the latest step's picture, when the page asked for one


def _request_size(request: Request, *_: Any) -> ZeroGpuJob:
    s = request.settings
    return ZeroGpuJob(s.steps, s.num_frames, s.width, s.height, s.cfg, s.step_cache)


class Runner:
    """Runs requests on one engine for every tab and session; one job at a time (the engine's lock and the queue).

    A job stops at its next step when its tab's Cancel is pressed (or the API's ``/cancel``, which stops
    every job of the session), when gradio cancels the event
    (``Job.cancel()`` in gradio_client), or when the session goes away (the page's unload event,
    which gradio fires when the tab closes or the client dies).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._jobs: dict[Slot, _Job] = {}
        self._preview_wanted: dict[str, bool] = {}
        # Page jobs between Generate and their start (waiting in the queue), and those cancelled meanwhile.
        self._waiting: set[Slot] = set()
        self._cancelled_waiting: set[Slot] = set()
        self._lock = threading.Lock()
        self._run_job = wrap_for_zerogpu(self._run_sync, _request_size)

    def require_ready(self) -> None:
        """Generate explains and does nothing until the model is loaded."""
        status = self.engine.status()
        if status.state == "loading":
            raise gr.Error(
                f"The model is still loading ({status.message}). Generate works as soon as the status line at the top "
                "says Ready; nothing was started.",
                title="Model still loading",
                print_exception=False,
            )
        if status.state == "failed":
            raise gr.Error(
                f"The model could not be loaded: {status.message}. Fix that and restart the app.",
                title="No model",
                print_exception=False,
            )

    async def generate(
        self, build: Callable[[], Request], session: str | None, progress: gr.Progress | None = None,
        cancel: threading.Event | None = None, tab: str = "",
    ) -> Outputs:
        """Build the request and run it: (video path, settings path, seed used, message).

        ``cancel``: an event of the caller's that stops the job too (a batch job's own cancel);
        ``tab``: which of the session's job slots it takes (the tab's task, "batch", "continue").
        """
        self.require_ready()
        try:
            request = build()
        except PusaInputError as err:
            raise input_error(err) from None
        job = _Job(cancel or threading.Event())
        key = _slot(session, tab)
        preview = self._preview_wanted.get(key[0], False)
        with self._lock:
            self._waiting.discard(key)
            if key in self._cancelled_waiting:
                self._cancelled_waiting.discard(key)
                return None, None, None, "Cancelled before it started. Nothing was run or saved."
            self._jobs[key] = job
        try:
            return await asyncio.to_thread(self._run_job, request, job, progress, preview)
        except asyncio.CancelledError:
            # gradio cancelled the event: the engine stops at its next step, and writes nothing.
            job.left = True
            job.cancel.set()
            raise
        finally:
            with self._lock:
                if self._jobs.get(key) is job:
                    del self._jobs[key]

    def _run_sync(self, request: Request, job: _Job, progress: gr.Progress | None, preview: bool = False) -> Outputs:
        def report(p: Progress) -> None:
            job.last = p
            if p.preview is not None:
                job.preview = p.preview
            if progress is not None and not job.left:
                progress(p.fraction, desc=progress_text(p))

        try:
            result = self.engine.generate(request, progress=report, cancel=job.cancel, preview=preview)
        except PusaInputError as err:
            raise input_error(err) from None
        except GenerationCancelled:
            return None, None, None, self._cancelled_message(job)
        except OutOfMemory as err:
            raise gr.Error(str(err), title="Out of memory", print_exception=False) from None
        except JobTimedOut as err:
            raise gr.Error(f"{str(err)[:1].upper()}{str(err)[1:]}.", title="Time limit", print_exception=False) from None
        except EngineNotReady as err:
            raise gr.Error(f"{err}.", title="Model not ready", print_exception=False) from None
        except RankFailed as err:
            raise gr.Error(f"{str(err)[:1].upper()}{str(err)[1:]}. Nothing was saved; every rank is ready for the "
                           "next job.", title="A rank failed", print_exception=False) from None
        except RanksOutOfStep as err:
            raise gr.Error(f"{str(err)[:1].upper()}{str(err)[1:]}.", title="Ranks out of step", print_exception=False) from None
        except Exception as err:  # the UI boundary: an unexpected failure is reported, the app keeps serving
            log.exception("generation failed")
            raise gr.Error(
                f"Generation failed: {type(err).__name__}: {err}. The app is still running; "
                "try again, or with a smaller size or fewer frames.",
                title="Generation failed",
            ) from None
        return str(result.video_path), str(result.settings_path), result.seed, describe_result(result, request.settings.fps)

    def waiting(self, session: str | None, tab: str = "") -> None:
        """The page pressed Generate: until the job starts it waits in the queue, where Cancel must reach it too."""
        with self._lock:
            self._waiting.add(_slot(session, tab))
            self._cancelled_waiting.discard(_slot(session, tab))

    def settled(self, session: str | None, tab: str = "") -> None:
        """The page's job ended, ran or not (a refusal, a full queue): nothing of it waits any more."""
        with self._lock:
            self._waiting.discard(_slot(session, tab))
            self._cancelled_waiting.discard(_slot(session, tab))

    def cancel(self, session: str | None, tab: str | None = "") -> str:
        """Ask the session's job in ``tab`` (None: every one of its jobs) to stop at the next denoising
        step, or its waiting job not to start."""
        name = session or NO_SESSION
        with self._lock:
            slots = [_slot(session, tab)] if tab is not None else sorted(
                {s for s in (*self._jobs, *self._waiting) if s[0] == name}
            )
            jobs = [self._jobs[s] for s in slots if s in self._jobs]
            waiting = [s for s in slots if s not in self._jobs and s in self._waiting]
            self._cancelled_waiting.update(waiting)
        for job in jobs:
            job.cancel.set()
        if jobs:
            return "Cancelling: the job stops at the next denoising step."
        if waiting:
            return "Cancelling: your job is still waiting in the queue, and will not run."
        return "Nothing of yours is running, so there is nothing to cancel."

    def leave(self, session: str | None) -> None:
        """The session is gone (tab closed, client killed): stop its job, nobody will receive it."""
        if session is None:
            return
        with self._lock:
            self._preview_wanted.pop(session, None)
            self._cancelled_waiting.update(s for s in self._waiting if s[0] == session)
            jobs = [job for s, job in self._jobs.items() if s[0] == session]
        for job in jobs:
            job.left = True
            job.cancel.set()

    def want_preview(self, session: str | None, on: bool) -> None:
        """Whether this session's next jobs make a step preview (the page's switch)."""
        with self._lock:
            if on:
                self._preview_wanted[session or NO_SESSION] = True
            else:
                self._preview_wanted.pop(session or NO_SESSION, None)

    def latest_preview(self, session: str | None, tab: str = "") -> np.ndarray | None:
        """The newest step picture of the session's running job in ``tab``, if it made one."""
        with self._lock:
            job = self._jobs.get(_slot(session, tab))
        return job.preview if job is not None else None

    def latest_progress(self, session: str | None, tab: str = "") -> Progress | None:
        """The last progress report of the session's running job in ``tab``, if one runs."""
        with self._lock:
            job = self._jobs.get(_slot(session, tab))
        return job.last if job is not None else None

    @staticmethod
    def _cancelled_message(job: _Job) -> str:
        last = job.last
        where = f" after step {last.step} of {last.total}" if last and last.step is not None and last.total else ""
        return f"Cancelled{where}. Nothing was saved; the engine is ready for the next job."

    def memory_line(self, size: str, frames: float | int, preset: str = facts.QUALITY) -> str:
        """The engine's placement and memory forecast for this size and preset, or why it cannot be given."""
        try:
            width, height = parse_size(size)
        except PusaInputError as err:
            return f"Memory: {field_message(err.field, err.message)}"
        if isinstance(frames, bool) or not isinstance(frames, (int, float)) or not float(frames).is_integer():
            return "Memory: Frames must be a whole number."
        if preset not in facts.PRESETS:
            choices = ", ".join(facts.PRESETS)
            return f"Memory: {field_message('preset', f'must be one of {choices}, got {preset!r}')}"
        settings = Settings(width=width, height=height, num_frames=int(frames), preset=preset)
        return f"Memory: {self.engine.memory_report(settings)}"
