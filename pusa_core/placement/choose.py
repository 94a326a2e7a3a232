"""Choosing the placement for this machine: automatic, or the kind the caller asks for.

The choice is made with the memory planner for a reference job, and the reason is kept so the
app can tell the user which placement is used and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import PusaInputError
from ..facts import DEFAULT_FRAMES, HD_HEIGHT, HD_WIDTH
from .activations import JobSize
from .devices import Gpu, Host, detect_host, gib
from .layouts import KINDS
from .loads import MemoryPlan
from .models import PlanOptions
from .planner import plan_memory, suggest_changes

# The environment variable the app and the plan CLI read for ``--placement``; this package only names
# it in messages, the callers read it and pass the value on.
ENV_VAR = "PUSA_PLACEMENT"
ASKED_BY = f"--placement / {ENV_VAR}"
# The split is planned once, at load, for the largest job Pusa is run at: 720p, 81 frames.
REFERENCE_JOB = JobSize(HD_WIDTH, HD_HEIGHT, DEFAULT_FRAMES)


def requested_kind(requested: str | None) -> str | None:
    """The placement kind asked for (any case, spaces ignored); None for automatic (None, "" or "auto")."""
    value = (requested or "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in KINDS:
        raise PusaInputError("placement", f"{value!r} is not a placement ({ASKED_BY}); "
                                          f"use one of auto, {', '.join(KINDS)}")
    return value


@dataclass(frozen=True)
class Placement:
    """The chosen placement, why, and its memory plan for the reference job."""

    kind: str
    gpus: tuple[Gpu, ...]
    reason: str
    memory: MemoryPlan
    simulated: bool = False
    host: Host | None = None  # a simulated machine's RAM; None: this machine's, read at each plan

    @property
    def options(self) -> PlanOptions:
        return self.memory.options

    @property
    def fp8(self) -> bool:
        return self.options.weights == "fp8"


def _gpu_list(gpus: Sequence[Gpu]) -> str:
    return ", ".join(f"{g.name} ({gib(g.free)} GiB free)" for g in gpus)


def choose_placement(gpus: Sequence[Gpu], job: JobSize = REFERENCE_JOB, requested: str | None = None,
                     options: PlanOptions | None = None, simulated: bool = False,
                     host: Host | None = None) -> Placement:
    """Pick shard / single / offload / cpu for these GPUs and ``job``, or honour ``requested``.

    Automatic (``requested`` None or "auto"): shard with two or more GPUs, single when the job fits
    one GPU, offload otherwise, cpu without CUDA. When sharding or a single GPU is predicted not to
    fit but offloading does, offload is chosen and the reason says so. ``host`` simulates the
    machine's RAM for cpu plans.
    """
    options = options or PlanOptions()
    gpus = tuple(gpus)
    kind = requested_kind(requested)
    if kind is not None:
        if kind == "cpu" and options.weights == "fp8":
            raise PusaInputError("fp8", "fp8 weights need a GPU; the cpu placement runs in float32")
        plan = plan_memory(kind, gpus, job, options, simulated=simulated, host=host)
        return Placement(kind, gpus, f"{kind} requested ({ASKED_BY})", plan, simulated, host)
    if not gpus:
        if options.weights == "fp8":
            raise PusaInputError("fp8", "fp8 weights need a GPU and none is visible")
        plan = plan_memory("cpu", gpus, job, options, simulated=simulated, host=host)
        return Placement("cpu", gpus, "no CUDA GPU visible: running on the CPU in float32", plan, simulated, host)
    first = "shard" if len(gpus) >= 2 else "single"
    plan = plan_memory(first, gpus, job, options, simulated=simulated, suggest=False)
    if first == "shard":
        split = ", ".join(f"{d.device} blocks {d.block_range}" for d in plan.devices if d.blocks)
        why = f"{len(gpus)} GPUs ({_gpu_list(gpus)}): transformer blocks split as {split}"
    else:
        why = f"one GPU ({_gpu_list(gpus)}) holds the whole job"
    if plan.verdict == "ok":
        return Placement(first, gpus, why, plan, simulated)
    fallback = plan_memory("offload", gpus, job, options, simulated=simulated, suggest=False)
    if fallback.verdict == "ok":
        too_big = f"{first} would need {gib(plan.peak_device.peak)} GiB on {plan.peak_device.device}"
        why = (f"{too_big}, more than its {gib(plan.peak_device.budget)} GiB; blocks are streamed to "
               f"{fallback.devices[0].device} instead")
        return Placement("offload", gpus, why, fallback, simulated)
    plan.suggestions = suggest_changes(plan, gpus, simulated)
    return Placement(first, gpus, f"{why}; predicted not to fit (see the plan)", plan, simulated)


def plan_job(placement: Placement, job: JobSize) -> MemoryPlan:
    """The memory plan of ``job`` under an applied placement (the shard split stays as loaded).

    A cpu job is checked against the RAM available now; the loaded weights are already out of it.
    """
    device_map = placement.memory.device_map if placement.kind == "shard" else None
    host = placement.host
    if host is None and placement.kind == "cpu":
        host = detect_host(holds_weights=True)
    return plan_memory(placement.kind, placement.gpus, job, placement.options, device_map=device_map,
                       simulated=placement.simulated, host=host)
