"""Batches: one click, several jobs (N seeds, or one prompt per line), each queued as its own GPU job.

:func:`expand` turns a tab's form values into one set of values per job. :class:`BatchQueue` holds
every session's batch jobs (queued, running, finished) and bounds them: at most :data:`MAX_BATCH` of
one session's jobs wait or run at once, and at most ``max_waiting`` wait across all sessions (the
app's ``--max-queue``). The page runs a session's jobs one GPU-queue event at a time (see
``ui/batch_panel.py``), so each job joins the back of the queue behind what other users queued
meanwhile: a batch never holds the GPU for its whole length. Nothing here imports gradio.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pusa_core.errors import PusaInputError
from pusa_core.facts import SEED
from pusa_core.requests import Request
from ui.form import seed_value

MAX_BATCH = 8  # jobs one session may have waiting or running at once
KEEP_FINISHED = 16  # finished jobs a session's queue view still lists
SEEDS_INCREMENT, SEEDS_RANDOM = "increment", "random"
SEED_MODES = (SEEDS_INCREMENT, SEEDS_RANDOM)
# Fields of the batch controls, named as the page labels them (they are not part of the task APIs).
COUNT_FIELD = "Batch"
SEEDS_FIELD = "Batch seeds"
PER_LINE_FIELD = "One prompt per line"
ACTIVE = ("queued", "running")


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise PusaInputError(COUNT_FIELD, f"must be a whole number of videos from 1 to {MAX_BATCH}, got {value!r}")
    if not 1 <= value <= MAX_BATCH:
        raise PusaInputError(COUNT_FIELD, f"must be from 1 to {MAX_BATCH} videos, got {int(value)}")
    return int(value)


def prompt_lines(prompt: object) -> list[str]:
    """The non-empty lines of a prompt, each stripped."""
    if not isinstance(prompt, str):
        raise PusaInputError("prompt", f"must be text, got {type(prompt).__name__}")
    return [line.strip() for line in prompt.splitlines() if line.strip()]


def batch_seeds(values: dict[str, Any], count: int, mode: object, rng: random.Random) -> list[int | None]:
    """The seed of each of ``count`` videos: the form's seed (or a random one) and the next ones, or None (random) each."""
    if mode not in SEED_MODES:
        raise PusaInputError(SEEDS_FIELD, f"{mode!r} is not a choice; choose {SEEDS_INCREMENT!r} or {SEEDS_RANDOM!r}")
    if mode == SEEDS_RANDOM:
        return [None] * count
    seed = seed_value(values["seed"], values["randomize_seed"])
    if seed is None:
        base = rng.randint(int(SEED.low), int(SEED.high) - count + 1)
    else:
        if problem := SEED.check(seed):
            raise PusaInputError("seed", problem)
        base = int(seed)
        if base + count - 1 > SEED.high:
            raise PusaInputError(
                "seed", f"{base} + {count - 1} passes the largest seed, {int(SEED.high)}; "
                f"type a seed of at most {int(SEED.high) - count + 1}",
            )
    return [base + i for i in range(count)]


def expand(values: dict[str, Any], count: object, seeds: object, per_line: object, rng: random.Random) -> list[dict[str, Any]]:
    """One form-values dict per job: for each prompt (the prompt, or each of its lines), ``count`` seeds.

    With one prompt per line every line gets the same seeds, so the lines can be compared at equal seeds.
    """
    count = _count(count)
    if not isinstance(per_line, bool):
        raise PusaInputError(PER_LINE_FIELD, f"must be true or false, got {per_line!r}")
    if per_line:
        prompts = prompt_lines(values["prompt"])
        if not prompts:
            raise PusaInputError("prompt", "is empty; write one prompt per line, or untick 'One prompt per line'")
        if len(prompts) > MAX_BATCH:
            raise PusaInputError("prompt", f"has {len(prompts)} lines; a batch takes at most {MAX_BATCH}, one prompt per line")
    else:
        prompts = [values["prompt"]]
    if len(prompts) * count > MAX_BATCH:
        raise PusaInputError(
            COUNT_FIELD, f"{count} videos x {len(prompts)} prompt lines is {count * len(prompts)} jobs; "
            f"a batch runs at most {MAX_BATCH}",
        )
    seed_list = batch_seeds(values, count, seeds, rng)
    return [
        {**values, "prompt": prompt, "seed": seed if seed is not None else values["seed"], "randomize_seed": seed is None}
        for prompt in prompts
        for seed in seed_list
    ]


@dataclass
class BatchJob:
    """One queued job of a session, as the queue view lists it."""

    id: int
    session: str
    task: str
    tab: str  # the tab's label
    request: Request
    number: int  # its place in its batch, from 1
    of: int
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued, running, done, cancelled, failed
    seed: int | None = None  # the seed asked for (None: random); the one used once done
    result: str = ""  # the output's name, or why it stopped

    @property
    def prompt(self) -> str:
        return self.request.settings.prompt

    @property
    def title(self) -> str:
        return f"Batch job {self.number} of {self.of}"


class BatchQueue:
    """Every session's batch jobs, thread-safe; each (session, tab) runs its jobs through one loop at a time."""

    def __init__(self, max_waiting: int | None = None) -> None:
        self.max_waiting = max_waiting
        self._jobs: dict[str, list[BatchJob]] = {}
        self._loops: set[tuple[str, str]] = set()  # (session, task) whose loop of queue events is going
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, session: str, task: str, tab: str, requests: Sequence[Request]) -> tuple[list[BatchJob], bool]:
        """Queue ``requests``; returns the jobs and whether the caller must start the (session, task) loop."""
        with self._lock:
            mine = self._jobs.setdefault(session, [])
            active = sum(job.state in ACTIVE for job in mine)
            if active + len(requests) > MAX_BATCH:
                raise PusaInputError(
                    COUNT_FIELD, f"you have {active} jobs queued or running and asked for {len(requests)} more; "
                    f"at most {MAX_BATCH} wait at once per visitor: wait for some to finish, or cancel some",
                )
            waiting = sum(job.state == "queued" for jobs in self._jobs.values() for job in jobs)
            if self.max_waiting is not None and waiting + len(requests) > self.max_waiting:
                raise PusaInputError(
                    COUNT_FIELD, f"the server has {waiting} batch jobs waiting and takes at most {self.max_waiting} "
                    "(its --max-queue); try again when some have run",
                )
            jobs = [
                BatchJob(next(self._ids), session, task, tab, request, i + 1, len(requests), seed=request.settings.seed)
                for i, request in enumerate(requests)
            ]
            mine.extend(jobs)
            start = (session, task) not in self._loops
            self._loops.add((session, task))
            return jobs, start

    def take(self, session: str, task: str) -> BatchJob | None:
        """The session's next queued job of ``task``, now running; None when there is none."""
        with self._lock:
            for job in self._jobs.get(session, []):
                if job.task == task and job.state == "queued":
                    job.state = "running"
                    return job
        return None

    def finish(self, job: BatchJob, state: str, result: str, seed: int | None = None) -> None:
        with self._lock:
            job.state, job.result = state, result
            if seed is not None:
                job.seed = seed
            mine = self._jobs.get(job.session, [])
            finished = [j for j in mine if j.state not in ACTIVE]
            for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
                mine.remove(old)

    def more(self, session: str, task: str) -> bool:
        """Whether the (session, task) loop goes on; when nothing of ``task`` is queued, the loop ends."""
        with self._lock:
            if any(job.task == task and job.state == "queued" for job in self._jobs.get(session, [])):
                return True
            self._loops.discard((session, task))
            return False

    def stall(self, session: str, task: str, reason: str) -> int:
        """The loop could not go on (e.g. the server's queue was full): its queued jobs will not run. Returns how many."""
        with self._lock:
            self._loops.discard((session, task))
            stopped = [job for job in self._jobs.get(session, []) if job.task == task and job.state == "queued"]
            for job in stopped:
                job.state, job.result = "failed", f"not started: {reason}"
            return len(stopped)

    def cancel(self, session: str, job_id: object) -> str:
        """Cancel one of the session's jobs: a queued one never runs, a running one stops at its next step."""
        if job_id is None or job_id == "":
            return "Choose a job to cancel first."
        with self._lock:
            job = next((j for j in self._jobs.get(session, []) if j.id == job_id), None)
            if job is None:
                return f"Job #{job_id} is not in your queue."
            job.cancel.set()
            if job.state == "queued":
                job.state, job.result = "cancelled", "cancelled before it started"
                return f"Cancelled job #{job.id}: it will not run."
        if job.state == "running":
            return f"Cancelling job #{job.id}: it stops at the next denoising step."
        return f"Job #{job.id} has already {job.state}; nothing to cancel."

    def jobs(self, session: str) -> list[BatchJob]:
        """A snapshot of the session's jobs, oldest first."""
        with self._lock:
            return [replace(job) for job in self._jobs.get(session, [])]

    def busy(self, session: str) -> bool:
        with self._lock:
            return any(job.state in ACTIVE for job in self._jobs.get(session, []))

    def leave(self, session: str) -> None:
        """The session is gone: its queued jobs never run, its running one stops."""
        with self._lock:
            for job in self._jobs.pop(session, []):
                job.cancel.set()
            self._loops = {loop for loop in self._loops if loop[0] != session}
