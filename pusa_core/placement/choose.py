"""Choosing the placement for this machine: automatic, or the kind the caller asks for.

The choice is made with the memory planner for a reference job, and the reason is kept so the
app can tell the user which placement is used and why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from ..errors import PusaInputError
from ..facts import DEFAULT_CFG, DEFAULT_FRAMES, HD_HEIGHT, HD_WIDTH
from .activations import JobSize
from .devices import GIB, Gpu, Host, detect_host, gib
from .layouts import KINDS, PARALLEL_KINDS
from .loads import MemoryPlan
from .models import PlanOptions
from .planner import plan_memory, suggest_changes
from .speed import DEFAULT_LINK, LINKS, Layout, StepTime, gpu_class, step_time

# The environment variable the app and the plan CLI read for ``--placement``; this package only names
# it in messages, the callers read it and pass the value on.
ENV_VAR = "PUSA_PLACEMENT"
ASKED_BY = f"--placement / {ENV_VAR}"
# The split is planned once, at load, for the largest job Pusa is run at: 720p, 81 frames.
REFERENCE_JOB = JobSize(HD_WIDTH, HD_HEIGHT, DEFAULT_FRAMES)
ONE_PROCESS_KINDS = tuple(k for k in KINDS if k not in PARALLEL_KINDS and k != "cpu")
# fp8 weight storage costs some quality, so automatic choices take it only where bf16 fits no
# parallel placement, or for a large gain: at least this many times faster than the best in bf16.
FP8_MIN_SPEEDUP = 1.5


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
    """The chosen placement, why, and its memory plan for the reference job.

    ``gpus``: the GPUs the placement uses; under cfg-parallel and sequence-parallel, one per rank.
    """

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

    @property
    def cfg_degree(self) -> int:
        """Guidance groups: 2 when each rank runs one of a step's two passes, else 1."""
        return self.memory.cfg_degree

    @property
    def sequence_degree(self) -> int:
        """Ranks that share every pass's tokens (within a guidance group); 1 when none do."""
        return self.memory.sequence_degree

    def step_time(self, cfg: float, link: str = DEFAULT_LINK) -> StepTime | None:
        """Predicted step time of this placement's job at ``cfg`` (None on the CPU)."""
        return predict_step(self.memory, self.gpus, cfg, link)


def predict_step(plan: MemoryPlan, gpus: Sequence[Gpu], cfg: float, link: str = DEFAULT_LINK) -> StepTime | None:
    """The speed model's step time for ``plan`` on ``gpus`` (their smallest card's class); None for cpu."""
    if plan.kind == "cpu":
        return None
    used = {d.device for d in plan.devices}
    memory = min(g.total for g in gpus if g.device in used) / GIB
    gpu_loads = [d for d in plan.devices if d.budget is not None]
    layout = Layout(plan.kind, plan.cfg_degree, plan.sequence_degree, plan.options.weights == "fp8",
                    shard_blocks=tuple(len(d.blocks) for d in gpu_loads) if plan.kind == "shard" else (),
                    streamed_bytes=plan.sizes.transformer + plan.sizes.lora - plan.sizes.non_block)
    job = plan.job
    return step_time(layout, job.width, job.height, job.frames, cfg, gpu_class(memory), LINKS[link])


def _gpu_list(gpus: Sequence[Gpu]) -> str:
    return ", ".join(f"{g.name} ({gib(g.free)} GiB free)" for g in gpus)


def _too_big(plan: MemoryPlan) -> str:
    top = plan.peak_device
    return f"{plan.kind} would need {gib(top.peak)} GiB on {top.device}, more than its {gib(top.budget)} GiB"


def _check_ranks(ranks: int | None, kind: str | None, gpus: Sequence[Gpu]) -> None:
    """Refuse a process count the placement cannot run with, naming the launch that would."""
    if ranks is not None and (isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1):
        raise PusaInputError("ranks", f"{ranks!r} is not a number of processes; give 1 or more")
    if kind in PARALLEL_KINDS and ranks == 1:
        raise PusaInputError("placement", f"{kind!r} runs one process per GPU; start them with "
                                          f"torchrun --nproc-per-node {max(2, len(gpus))}, or use shard, single "
                                          "or offload in one process")
    if kind in ONE_PROCESS_KINDS and ranks is not None and ranks > 1:
        raise PusaInputError("placement", f"{kind!r} runs in one process, and this job has {ranks}; use "
                                          "cfg-parallel or sequence-parallel, or start one process for it")
    if gpus and ranks is not None and ranks > len(gpus) and kind != "cpu":
        raise PusaInputError("placement", f"{ranks} processes need a GPU each and {len(gpus)} are visible")


def choose_placement(gpus: Sequence[Gpu], job: JobSize = REFERENCE_JOB, requested: str | None = None,
                     options: PlanOptions | None = None, simulated: bool = False,
                     host: Host | None = None, cfg: float = DEFAULT_CFG, ranks: int | None = 1,
                     link: str = DEFAULT_LINK) -> Placement:
    """Pick a placement for these GPUs and ``job``, or honour ``requested``.

    ``ranks`` is how many processes run each job, one GPU each: 1 (``python app.py``), N >= 2
    (``torchrun --nproc-per-node N``: cfg-parallel or sequence-parallel over the first N GPUs, or
    cpu on a machine without one), or None for whichever launch is predicted fastest (the plan
    CLI: the reason names the launch). ``cfg`` is the job's guidance scale (cfg 1 has no second
    pass to run in parallel); ``link`` (``pcie4`` / ``nvlink``) joins the GPUs in the speed model.

    Automatic with one process, as always: shard with two or more GPUs, single when the job fits
    one GPU, offload otherwise, cpu without CUDA; when sharding or a single GPU is predicted not to
    fit but offloading does, offload is chosen and the reason says so. With more processes the
    fastest placement that fits by :mod:`.speed`'s model, in the weights asked for; a parallel
    placement with fp8 storage only when nothing fits in bf16 or it is predicted at least
    :data:`FP8_MIN_SPEEDUP` times faster than the best that does. ``host`` simulates the RAM for cpu plans.
    """
    options = options or PlanOptions()
    gpus = tuple(gpus)
    if link not in LINKS:
        raise PusaInputError("link", f"{link!r} is not one of {', '.join(LINKS)}")
    kind = requested_kind(requested)
    _check_ranks(ranks, kind, gpus)
    if kind is not None:
        return _requested(kind, gpus, job, options, simulated, host, cfg, ranks)
    if not gpus:
        if options.weights == "fp8":
            raise PusaInputError("fp8", "fp8 weights need a GPU and none is visible")
        degrees = _cpu_degrees(ranks or 1, cfg)
        plan = plan_memory("cpu", gpus, job, options, simulated=simulated, host=host, degrees=degrees)
        return Placement("cpu", gpus, f"no CUDA GPU visible: {_cpu_reason(degrees)}", plan, simulated, host)
    one = _one_process(gpus, job, options, simulated) if ranks in (1, None) else None
    if one is not None and ranks == 1:
        return one
    return _fastest(gpus[:ranks] if ranks else gpus, job, options, simulated, cfg, link, one)


def _requested(kind: str, gpus: tuple[Gpu, ...], job: JobSize, options: PlanOptions, simulated: bool,
               host: Host | None, cfg: float, ranks: int | None) -> Placement:
    if kind == "cpu" and options.weights == "fp8":
        raise PusaInputError("fp8", "fp8 weights need a GPU; the cpu placement runs in float32")
    if kind == "cfg-parallel" and cfg == 1:
        raise PusaInputError("cfg", "cfg-parallel runs the unconditional pass on a second GPU, and at cfg 1 there "
                                    "is none; use sequence-parallel, which is the one for cfg 1")
    why = f"{kind} requested ({ASKED_BY})"
    if kind == "cpu":
        degrees = _cpu_degrees(ranks or 1, cfg)
        plan = plan_memory(kind, (), job, options, simulated=simulated, host=host, degrees=degrees)
        return Placement(kind, (), why if degrees == (1, 1) else f"{why}: {_cpu_reason(degrees)}", plan, simulated, host)
    used = gpus[:ranks] if kind in PARALLEL_KINDS and ranks else gpus
    plan = plan_memory(kind, used, job, options, simulated=simulated, host=host)
    return Placement(kind, used, why, plan, simulated, host)


def _cpu_degrees(ranks: int, cfg: float) -> tuple[int, int]:
    """How processes on the CPU share a job: two guidance groups when there are two passes to share."""
    if ranks > 1 and cfg > 1 and ranks % 2 == 0:
        return 2, ranks // 2
    return 1, ranks


def _cpu_reason(degrees: tuple[int, int]) -> str:
    if degrees == (1, 1):
        return "running on the CPU in float32"
    cfg_degree, sequence_degree = degrees
    return f"{cfg_degree * sequence_degree} processes on the CPU in float32, {_sharing(cfg_degree, sequence_degree)}"


def _sharing(cfg_degree: int, sequence_degree: int) -> str:
    """How the ranks share a step, in words."""
    if cfg_degree == 1:
        return f"each runs 1/{sequence_degree} of every pass's tokens (sequence-parallel)"
    if sequence_degree == 1:
        return "each runs one of a step's two guidance passes (cfg-parallel)"
    return (f"2 guidance groups x {sequence_degree} sequence ranks: each runs 1/{sequence_degree} of one guidance "
            "pass's tokens (cfg-parallel)")


def _one_process(gpus: tuple[Gpu, ...], job: JobSize, options: PlanOptions, simulated: bool) -> Placement:
    """The choice for one process: shard with two or more GPUs, single on one, offload when they do not fit."""
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
        why = f"{_too_big(plan)}; blocks are streamed to {fallback.devices[0].device} instead"
        return Placement("offload", gpus, why, fallback, simulated)
    plan.suggestions = suggest_changes(plan, gpus, simulated)
    return Placement(first, gpus, f"{why}; predicted not to fit (see the plan)", plan, simulated)


def _fastest(gpus: tuple[Gpu, ...], job: JobSize, options: PlanOptions, simulated: bool, cfg: float, link: str,
             one: Placement | None) -> Placement:
    """The fastest placement that fits: a parallel one over ``gpus``, or ``one``, the one-process choice."""
    kinds = [k for k in PARALLEL_KINDS if len(gpus) >= 2 and (k != "cfg-parallel" or (cfg > 1 and len(gpus) % 2 == 0))]
    weights = [options] + ([replace(options, weights="fp8")] if options.weights == "bf16" else [])
    parallel = [plan_memory(k, gpus, job, o, simulated=simulated, suggest=False) for o in weights for k in kinds]
    plans = parallel + ([one.memory] if one is not None else [])
    times = {id(p): predict_step(p, gpus, cfg, link) for p in plans}

    def seconds(p: MemoryPlan) -> float:
        return times[id(p)].seconds

    fitting = [p for p in plans if p.verdict == "ok"]
    best = min((p for p in fitting if p.options.weights == options.weights), key=seconds, default=None)
    fp8 = min((p for p in fitting if p.options.weights != options.weights), key=seconds, default=None)
    if fp8 is not None and (best is None or seconds(fp8) * FP8_MIN_SPEEDUP <= seconds(best)):
        best = fp8
    if best is None and one is not None:
        return one
    if best is None:
        refused = parallel[0]
        refused.suggestions = suggest_changes(refused, gpus, simulated)
        return Placement(refused.kind, gpus, f"{_parallel_head(refused, gpus, False)}; predicted not to fit "
                                             "(see the plan)", refused, simulated)
    time = times[id(best)]
    why = one.reason if one is not None and best is one.memory else _parallel_head(best, gpus, one is not None)
    why += f"; predicted step {time.ratio:.2f}x one GPU's over {time.link.name}"
    others = [f"{_label(p)} {times[id(p)].ratio:.2f}x" for p in fitting if p is not best]
    if others:
        why += f" (against {', '.join(others)})"
    refused = [_too_big(p) for p in parallel if p.verdict != "ok" and p.options.weights == options.weights]
    if refused:
        why += "; " + "; ".join(refused)
    if len(gpus) >= 2 and "cfg-parallel" not in kinds:
        why += "; cfg 1 has no second pass for cfg-parallel" if cfg == 1 else "; cfg-parallel needs an even number of GPUs"
    return Placement(best.kind, gpus, why, best, simulated)


def _label(plan: MemoryPlan) -> str:
    return plan.kind if plan.options.weights == "bf16" else f"{plan.kind} {plan.options.weights}"


def _parallel_head(plan: MemoryPlan, gpus: Sequence[Gpu], launch: bool) -> str:
    """Which GPUs, how to start the ranks, and how they share a step."""
    how = f" (torchrun --nproc-per-node {len(gpus)})" if launch else ""
    fp8 = ", fp8 weight storage" if plan.options.weights == "fp8" else ""
    return (f"{len(gpus)} GPUs ({_gpu_list(gpus)}), one process each{how}{fp8}: "
            f"{_sharing(plan.cfg_degree, plan.sequence_degree)}")


def plan_job(placement: Placement, job: JobSize, lora_merged: bool | None = None,
             active_lora_rank: int | None = None) -> MemoryPlan:
    """The memory plan of ``job`` under an applied placement (the shard split stays as loaded).

    A cpu job is checked against the RAM available now; the loaded weights are already out of it.
    ``lora_merged`` says whether the engine runs the LoRAs merged (None: as the placement was planned);
    ``active_lora_rank`` is the summed rank of the job's adapters (the preset's), which an unmerged pass computes.
    """
    options = placement.options
    if lora_merged is not None:
        options = replace(options, lora_merged=lora_merged)
    if active_lora_rank is not None:
        options = replace(options, active_lora_rank=active_lora_rank)
    device_map = placement.memory.device_map if placement.kind == "shard" else None
    host = placement.host
    if host is None and placement.kind == "cpu":
        host = detect_host(holds_weights=True)
    degrees = (placement.cfg_degree, placement.sequence_degree) if placement.kind == "cpu" else None
    return plan_memory(placement.kind, placement.gpus, job, options, device_map=device_map,
                       simulated=placement.simulated, host=host, degrees=degrees)
