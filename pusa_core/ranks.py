"""The processes of one launch: ``torchrun --nproc-per-node N app.py`` (or ``-m pusa_core.generate``).

Every rank loads the models; rank 0, the *leader*, serves the page (or reads the job list), and
the *followers* run each of its jobs with it. For a job the leader encodes the prompt and the
conditioning frames and draws the noise (text encoder and VAE run once, on rank 0), then sends
those tensors with the job's settings (a :class:`~pusa_core.job.SamplingJob`) to every follower;
every rank then applies the job's LoRA stack and samples with the placement's parallel guidance
(:mod:`pusa_core.parallel`), and only the leader decodes and writes.

Messages travel in a gloo group of their own, so they never mix with the sampler's collectives
(NCCL on GPUs). While no job runs the leader sends a keep-alive every quarter of the collective
timeout: a follower's wait for the next job is bounded by that timeout like every collective,
and a dead follower is found even between jobs.

Stops: a cancel or time limit on the leader, or an error on any rank, is agreed on at the next
step by the guidance objects; every rank ends the job (the leader's page shows why) and waits for
the next one. A rank that does not answer within the collective timeout (dead, stopped) ends the
job on the leader with :class:`~pusa_core.parallel.RanksOutOfStep`, and every later job is refused
with the same message: the ranks must be restarted.

With one process (``python app.py``) :meth:`Ranks.join` returns a single rank and nothing is sent.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import PusaInputError
from .parallel import RanksOutOfStep, init_group
from .placement.choose import ONE_PROCESS_KINDS, requested_kind
from .placement.layouts import PARALLEL_KINDS

TIMEOUT_ENV = "PUSA_COLLECTIVE_TIMEOUT"
TIMEOUT_FLAG = "--collective-timeout"
DEFAULT_TIMEOUT_SECONDS = 300.0
# Test hook, set only by the test suite: a module imported on every rank whose ``on_job(rank, settings,
# transformer)`` runs before each job's sampling (tests/support/faulty_rank.py makes one rank fail).
FAULT_HOOK_ENV = "PUSA_TEST_FAULT_HOOK"
_JOB, _IDLE, _LEAVE = "job", "idle", "leave"


def collective_timeout(text: str | float | None) -> float:
    """Seconds a rank waits for the others (``--collective-timeout`` / env): positive, default 300."""
    if text is None or text == "":
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise PusaInputError(TIMEOUT_FLAG, f"{text!r} is not a number of seconds; give a positive number, e.g. 300")
    return seconds


def launched_ranks() -> int:
    """How many ranks torchrun started (its ``WORLD_SIZE``); 1 without torchrun."""
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise PusaInputError("WORLD_SIZE", f"{text!r} is not a number of ranks; torchrun sets it; unset it to run alone")
    return int(text)


def check_launch(requested: str | None, world_size: int) -> None:
    """Refuse, before anything loads, a ``--placement`` this launch's number of ranks cannot run."""
    kind = requested_kind(requested)
    if kind in PARALLEL_KINDS and world_size == 1:
        raise PusaInputError("--placement", f"{kind} runs one process per GPU, and this is one process; launch it "
                             "with torchrun: torchrun --nproc-per-node 2 app.py [same flags] (or torchrun "
                             "--nproc-per-node 2 -m pusa_core.generate ...)")
    if kind in ONE_PROCESS_KINDS and world_size > 1:
        raise PusaInputError("--placement", f"{kind} runs in one process, and torchrun started {world_size}; use "
                             f"cfg-parallel, sequence-parallel or auto, or start without torchrun for {kind}")


class Ranks:
    """This process's place in the launch, and the job messages between the leader and the followers."""

    def __init__(self, rank: int = 0, world_size: int = 1, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 control: Any = None) -> None:
        """One process by default; :meth:`join` makes the ranks of a torchrun launch."""
        self.rank, self.world_size, self.timeout = rank, world_size, timeout
        self._control = control  # the gloo group of the job messages
        self._lock = threading.Lock()  # one message, or one job, at a time
        self._last_sent = time.monotonic()
        self._broken: str | None = None  # why the ranks are out of step, once they are
        self._left = False
        self._keep_alive: threading.Thread | None = None
        self._fault_hook = _load_fault_hook()

    @classmethod
    def join(cls, timeout: float = DEFAULT_TIMEOUT_SECONDS, init_method: str = "env://",
             rank: int | None = None, world_size: int | None = None) -> Ranks:
        """Join torchrun's ranks (environment ``RANK`` / ``WORLD_SIZE``); a single rank without torchrun.

        Tests pass a ``tcp://`` address, ``rank`` and ``world_size``.
        """
        size = world_size if world_size is not None else launched_ranks()
        if size == 1:
            return cls(timeout=timeout)
        span = timedelta(seconds=timeout)
        init_group(init_method, rank=rank, world_size=size, timeout=span)
        control = dist.new_group(backend="gloo", timeout=span)
        return cls(dist.get_rank(), dist.get_world_size(), timeout, control)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}" if self.parallel else "one process"

    # -- the leader ------------------------------------------------------------------------------
    def start_keep_alive(self) -> None:
        """Between jobs, tell the followers every quarter timeout that the leader is there (call once loaded)."""
        if not self.parallel or self._keep_alive is not None:
            return
        self._keep_alive = threading.Thread(target=self._keep_alive_loop, name="pusa-ranks-keep-alive", daemon=True)
        self._keep_alive.start()

    def _keep_alive_loop(self) -> None:
        interval = self.timeout / 4
        while not self._left and self._broken is None:
            time.sleep(interval / 4)
            if time.monotonic() - self._last_sent < interval or not self._lock.acquire(blocking=False):
                continue
            try:
                if not self._left:
                    self._send(_IDLE, None)
            except Exception as error:  # a follower is gone: the next job says so
                self._broken = self._lost(error)
            finally:
                self._lock.release()

    @contextmanager
    def job(self, message: Any) -> Iterator[None]:
        """Send ``message`` (a job) to every follower, then hold the ranks for the job's collectives.

        Raises :class:`RanksOutOfStep` when the ranks are no longer in step (then nothing is sent).
        """
        if not self.parallel:
            yield
            return
        with self._lock:
            self.check_in_step()
            try:
                self._send(_JOB, message)
            except Exception as error:
                self._broken = self._lost(error)
                raise RanksOutOfStep(self._broken) from error
            try:
                yield
            except RanksOutOfStep as error:
                self._broken = str(error)
                raise
            finally:
                self._last_sent = time.monotonic()

    def check_in_step(self) -> None:
        """Raise :class:`RanksOutOfStep` when an earlier failure left the ranks out of step."""
        if self._broken is not None:
            raise RanksOutOfStep(self._broken)

    def out_of_step(self, error: BaseException) -> RanksOutOfStep:
        """What a collective's failure on the leader becomes: the ranks are out of step from now on."""
        self._broken = self._lost(error)
        return RanksOutOfStep(self._broken)

    def leave(self, wait: float = 5.0) -> None:
        """Tell the followers to exit (the leader's last call); gives up after ``wait`` s if a job holds the ranks."""
        if not self.parallel or self._left:
            return
        self._left = True
        if self._broken is None and self._lock.acquire(timeout=wait):
            try:
                self._send(_LEAVE, None)
            except Exception:  # a follower that is gone already needs no goodbye
                pass
            finally:
                self._lock.release()

    def _send(self, kind: str, message: Any) -> None:
        dist.broadcast_object_list([(kind, message)], src=0, group=self._control)
        self._last_sent = time.monotonic()

    def _lost(self, error: BaseException) -> str:
        return (f"a rank did not answer within the {self.timeout:g} s collective timeout ({TIMEOUT_FLAG} / "
                f"{TIMEOUT_ENV}), or failed, so the ranks are out of step; restart the app (every rank): "
                f"{type(error).__name__}: {' '.join(str(error).split())[:300]}")

    # -- a follower ------------------------------------------------------------------------------
    def follow(self, run: Callable[[Any], None]) -> None:
        """Run each job the leader sends (``run(message)``) until it leaves.

        A job that ends on an agreed stop is reported on stderr and the next one is awaited; anything
        that leaves the ranks out of step (a collective failed) ends this rank with the exception.
        """
        while True:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0, group=self._control)
            kind, message = box[0]
            if kind == _LEAVE:
                return
            if kind == _JOB:
                run(message)

    def before_sampling(self, settings: Any, transformer: torch.nn.Module) -> None:
        """The test hook's ``on_job`` (nothing without it)."""
        if self._fault_hook is not None:
            self._fault_hook(self.rank, settings, transformer)

    def say(self, text: str) -> None:
        """A line on stderr, naming this rank (followers have no page to show it on)."""
        print(f"[rank {self.rank}] {text}", file=sys.stderr, flush=True)


def _load_fault_hook() -> Callable[[int, Any, torch.nn.Module], None] | None:
    name = os.environ.get(FAULT_HOOK_ENV)
    return importlib.import_module(name).on_job if name else None
