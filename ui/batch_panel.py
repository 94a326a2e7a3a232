"""The page side of batches: the controls under each tab's Generate, the queue view, and the loop that runs them.

A click on "Queue batch" checks every job (a bad one refuses the whole batch, naming the field),
queues them in the :class:`~ui.batch.BatchQueue`, and bumps the tab's ``kick`` counter. A change of
``kick`` runs the session's next job of that tab as one event of the shared GPU queue; when it ends
and more are queued, ``kick`` is bumped again. So each job waits at the back of the GPU queue, behind
everyone else's, and each writes its own output. The queue view (a table refreshed once a second
while something is queued or running) cancels one job: a queued one never starts, the running one
stops at its next step through the runner's cancel.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from pusa_core.errors import PusaInputError
from pusa_core.requests import Request
from ui.batch import MAX_BATCH, SEEDS_INCREMENT, SEEDS_RANDOM, BatchJob, BatchQueue, expand
from ui.runner import GPU_QUEUE, Runner, input_error, progress_text
from ui.widgets import EngineCheckedNumber, EngineCheckedRadio, OutputPanel

QUEUE_SECONDS = 1.0
COLUMNS = ["job", "tab", "prompt", "seed", "state"]
PROMPT_CHARS = 48
SEED_CHOICES = [("seed, seed+1, seed+2, ...", SEEDS_INCREMENT), ("a random seed each", SEEDS_RANDOM)]

def batch_slot(task: str) -> str:
    """The runner slot a tab's batch jobs take, beside the tab's own Generate."""
    return f"batch-{task}"


@dataclass(frozen=True)
class BatchControls:
    """A tab's batch settings and its "Queue batch" button."""

    count: gr.Number
    seeds: gr.Radio
    per_line: gr.Checkbox
    button: gr.Button

    def inputs(self) -> list[gr.components.Component]:
        return [self.count, self.seeds, self.per_line]


def batch_controls(task: str) -> BatchControls:
    """Rendered where called (under a tab's Generate)."""
    with gr.Accordion("Batch: several videos per click", open=False, elem_id=f"{task}-batch"):
        with gr.Row():
            count = EngineCheckedNumber(
                value=1, precision=0, label="Batch: N videos", elem_id=f"{task}-batch-count",
                info=f"1 to {MAX_BATCH}; each is its own job in the queue and its own output",
            )
            seeds = EngineCheckedRadio(SEED_CHOICES, value=SEEDS_INCREMENT, label="Seeds", elem_id=f"{task}-batch-seeds")
        per_line = gr.Checkbox(
            value=False, label="One prompt per line", elem_id=f"{task}-batch-per-line",
            info=f"Each non-empty line of the prompt is a job (N videos each; {MAX_BATCH} jobs at most)",
        )
        button = gr.Button("Queue batch", variant="secondary", elem_id=f"{task}-batch-queue")
    return BatchControls(count, seeds, per_line, button)


@dataclass(frozen=True)
class QueueView:
    """This session's batch jobs, with per-job cancel."""

    box: gr.Accordion
    table: gr.Dataframe
    job: gr.Dropdown
    cancel: gr.Button
    message: gr.Markdown
    timer: gr.Timer
    choices: gr.State  # the cancel choices last shown, so an unchanged list does not close an open dropdown


def queue_view() -> QueueView:
    """Rendered where called: an accordion that opens when a batch is queued."""
    with gr.Accordion("Queue: your batch jobs", open=False, elem_id="queue") as box:
        table = gr.Dataframe(
            headers=COLUMNS, value=[], interactive=False, label="Your batch jobs (this page only)", elem_id="queue-table",
            wrap=True,
        )
        with gr.Row():
            job = gr.Dropdown([], value=None, label="Job", elem_id="queue-job", scale=3)
            cancel = gr.Button("Cancel this job", variant="stop", elem_id="queue-cancel", scale=1)
        message = gr.Markdown(elem_id="queue-message")
    return QueueView(box, table, job, cancel, message, gr.Timer(QUEUE_SECONDS, active=False), gr.State([]))


def _short(text: str) -> str:
    return text if len(text) <= PROMPT_CHARS else text[: PROMPT_CHARS - 1] + "…"


def job_state(job: BatchJob, runner: Runner) -> str:
    if job.state == "running":
        progress = runner.latest_progress(job.session, batch_slot(job.task))
        return f"running · {progress_text(progress)}" if progress is not None else "running"
    if job.state == "queued" and job.cancel.is_set():
        return "cancelled"
    return f"{job.state}: {job.result}" if job.result else job.state


def rows(jobs: Sequence[BatchJob], runner: Runner) -> list[list[Any]]:
    return [
        [f"#{job.id} ({job.number} of {job.of})", job.tab, _short(job.prompt), "random" if job.seed is None else job.seed,
         job_state(job, runner)]
        for job in jobs
    ]


def cancel_choices(jobs: Sequence[BatchJob]) -> list[tuple[str, int]]:
    return [(f"#{job.id} · {job.tab} · {_short(job.prompt)} ({job.state})", job.id) for job in jobs if job.state in ("queued", "running")]


def _session(request: gr.Request | None) -> str:
    return request.session_hash if request is not None and request.session_hash else "no-session"


def refresh_view(queue: BatchQueue, runner: Runner, session: str, shown: list[Any]) -> list[Any]:
    """Table, cancel choices (skipped when unchanged), the choices shown, and whether the timer keeps going."""
    jobs = queue.jobs(session)
    choices = cancel_choices(jobs)
    same = [list(c) for c in choices] == [list(c) for c in shown]
    dropdown = gr.skip() if same else gr.update(choices=choices, value=choices[0][1] if choices else None)
    return [rows(jobs, runner), dropdown, choices, gr.Timer(active=queue.busy(session))]


def wire_queue_view(view: QueueView, queue: BatchQueue, runner: Runner) -> None:
    outputs = [view.table, view.job, view.choices, view.timer]

    def tick(shown: list[Any], request: gr.Request) -> list[Any]:
        return refresh_view(queue, runner, _session(request), shown)

    view.timer.tick(tick, view.choices, outputs, queue=False, api_visibility="private")

    def cancel(job_id: Any, shown: list[Any], request: gr.Request) -> list[Any]:
        session = _session(request)
        return [queue.cancel(session, job_id), *refresh_view(queue, runner, session, shown)]

    # Outside the queue: a full queue must not stop anyone from cancelling.
    view.cancel.click(cancel, [view.job, view.choices], [view.message, *outputs], queue=False, api_visibility="private")


def queue_jobs(
    queue: BatchQueue, runner: Runner, session: str, task: str, tab: str, build: Callable[[dict[str, Any]], Request],
    values: dict[str, Any], count: Any, seeds: Any, per_line: Any, rng: random.Random,
) -> tuple[list[BatchJob], bool]:
    """Check every job of the batch, then queue them all; returns the jobs and whether to start the tab's loop."""
    runner.require_ready()
    try:
        requests = [build(job_values) for job_values in expand(values, count, seeds, per_line, rng)]
        for one in requests:
            runner.engine.check(one)
        return queue.add(session, task, tab, requests)
    except PusaInputError as err:
        raise input_error(err) from None


async def run_one(queue: BatchQueue, runner: Runner, session: str, task: str, progress: gr.Progress | None = None) -> list[Any]:
    """Run the session's next queued job of ``task``: the tab's outputs (video, settings, seed, message), or skips."""
    job = queue.take(session, task)
    if job is None:
        return [gr.skip()] * 4
    finished = False
    try:
        video, settings, seed, message = await runner.generate(
            lambda: job.request, session, progress, cancel=job.cancel, tab=batch_slot(task)
        )
        finished = True
    except gr.Error as err:
        finished = True
        queue.finish(job, "failed", err.message)
        gr.Warning(f"{job.title}: {err.message}")
        return [None, None, None, f"{job.title}: {err.message}"]
    finally:
        if not finished:  # the event itself was cancelled (the page went away)
            queue.finish(job, "cancelled", "stopped")
    if video is None:
        queue.finish(job, "cancelled", message)
    else:
        queue.finish(job, "done", Path(video).name, seed)
    return [video, settings, seed, f"{job.title}: {message}"]


def wire_batch(
    task: str, tab: str, names: Sequence[str], components: Sequence[gr.components.Component],
    build: Callable[[dict[str, Any]], Request], controls: BatchControls, panel: OutputPanel,
    queue: BatchQueue, runner: Runner, view: QueueView, rng: random.Random | None = None,
) -> gr.Number:
    """Wire one tab's batch button to the queue and its run loop; returns the tab's ``kick`` counter."""
    rng = rng or random.Random()
    # A hidden number, not a gr.State: the page fires .change for a component a handler updated, not for a State.
    kick = gr.Number(0, precision=0, visible=False)

    def queue_batch(data: dict[gr.components.Component, Any], request: gr.Request) -> list[Any]:
        session = _session(request)
        values = {name: data[component] for name, component in zip(names, components)}
        jobs, start = queue_jobs(queue, runner, session, task, tab, build, values, *(data[c] for c in controls.inputs()), rng)
        seeds = ", ".join("random" if job.seed is None else str(job.seed) for job in jobs)
        note = f"Queued {len(jobs)} {tab} job{'s' if len(jobs) > 1 else ''} (seeds {seeds}); each runs in turn in the GPU queue."
        bump = data[kick] + 1 if start else gr.skip()
        return [bump, note, *refresh_view(queue, runner, session, [])[:3], gr.Timer(active=True), gr.Accordion(open=True)]

    # A set of inputs: the handler gets them as one dict, whatever the tab's own inputs are.
    controls.button.click(
        queue_batch, {*controls.inputs(), *components, kick},
        [kick, view.message, view.table, view.job, view.choices, view.timer, view.box], queue=False,
        api_visibility="private",
    )

    async def run_next(request: gr.Request, progress: gr.Progress = gr.Progress()) -> list[Any]:
        return await run_one(queue, runner, _session(request), task, progress)

    def more(value: int, request: gr.Request) -> Any:
        return value + 1 if queue.more(_session(request), task) else gr.skip()

    def stalled(request: gr.Request) -> str:
        stopped = queue.stall(_session(request), task, "the server's queue was full; queue them again")
        return f"The server's queue was full: {stopped} queued {tab} job{'s' if stopped != 1 else ''} did not start; queue them again."

    ran = kick.change(
        run_next, None, panel.outputs(), concurrency_id=GPU_QUEUE, concurrency_limit=1, api_visibility="private",
    )
    ran.then(more, kick, kick, queue=False, api_visibility="private")
    ran.failure(stalled, None, view.message, queue=False, api_visibility="private")
    return kick
