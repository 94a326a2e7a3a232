"""The memory planner: predict what a Pusa job needs on each device before it runs, and refuse a
plan that does not fit with suggestions instead of running into an out-of-memory error.

The ``cpu`` placement is budgeted against the RAM available when the plan is made (less a reserve
for the system), like GPUs against their free memory: a job that would exhaust the RAM swaps or
freezes the machine instead of raising an error, so it is refused before it starts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

from ..errors import PusaInputError
from ..facts import TEMPORAL_COMPRESSION, lora_merge_blocker
from .activations import JobSize, estimate_activations
from .devices import Gpu, Host, detect_host, gib
from .layouts import KINDS, PARALLEL_KINDS, lay_out, parallel_degrees
from .loads import DeviceLoad, MemoryPlan
from .models import PlanOptions, meta_models


def plan_memory(kind: str, gpus: Sequence[Gpu], job: JobSize, options: PlanOptions | None = None,
                device_map: Mapping[str, int | str] | None = None, simulated: bool = False,
                suggest: bool = True, host: Host | None = None, degrees: tuple[int, int] | None = None) -> MemoryPlan:
    """Predict per-device memory for ``job`` under placement ``kind`` and give a verdict.

    ``device_map`` fixes the shard split (the one already applied); without it the split is
    planned here. With ``suggest`` a refused plan carries the changes that would fit. ``host`` is
    the RAM a ``cpu`` plan must fit in; without it this machine's available RAM is read now.
    For cfg-parallel and sequence-parallel, ``gpus`` are the ranks' GPUs, one per rank. ``degrees``
    (cfg, sequence) is for ``cpu`` only: several processes on the CPU share each job and its RAM.
    """
    options = options or PlanOptions()
    if kind == "cpu" and options.weights != "fp32":
        options = replace(options, weights="fp32", vae_dtype="fp32")
    _check_kind(kind, len(gpus))
    if options.lora_merged is None:  # a shard split that spills to the host is known only once laid out: merged here
        options = replace(options, lora_merged=lora_merge_blocker(kind, options.weights) is None)
    if kind == "cpu" and host is None:
        host = detect_host()
    if degrees is not None and kind != "cpu":
        raise ValueError(f"degrees are given for cpu plans only; {kind!r} has them from its GPUs")
    cfg_degree, sequence_degree = degrees or parallel_degrees(kind, len(gpus))
    models = meta_models(options)
    acts = estimate_activations(job, options, models, sequence_degree)
    plan = MemoryPlan(kind, job, options, [], models.sizes, acts, host=host, cfg_degree=cfg_degree,
                      sequence_degree=sequence_degree)
    lay_out(plan, gpus, models, device_map, simulated)
    for dev in plan.devices:
        if not dev.fits:
            plan.problems.append(_shortfall(dev, plan.host if dev.device == "cpu" else None))
    if plan.problems and suggest:
        plan.suggestions = suggest_changes(plan, gpus, simulated)
    return plan


def _check_kind(kind: str, gpus: int) -> None:
    if kind not in KINDS:
        raise PusaInputError("placement", f"{kind!r} is not one of {', '.join(KINDS)}")
    if kind != "cpu" and not gpus:
        raise PusaInputError("placement", f"{kind!r} needs a CUDA GPU and none is visible; use 'cpu'")
    if kind == "shard" and gpus < 2:
        raise PusaInputError("placement", "'shard' needs two or more GPUs; use 'single' or 'offload' on one")
    if kind in PARALLEL_KINDS and gpus < 2:
        raise PusaInputError("placement", f"{kind!r} runs one process on each of two or more GPUs; "
                                          "use 'single' or 'offload' on one")
    if kind == "cfg-parallel" and gpus % 2:
        raise PusaInputError("placement", f"'cfg-parallel' splits the GPUs into two guidance groups of equal size, "
                                          f"so it needs an even number of them, not {gpus}; use 'sequence-parallel'")


def _shortfall(dev: DeviceLoad, host: Host | None) -> str:
    if host is None:
        return f"{dev.device} needs {gib(dev.peak)} GiB but has {gib(dev.budget)} GiB to plan with."
    return (f"{dev.device} needs {gib(dev.peak)} GiB of RAM but has {gib(dev.budget)} GiB to plan with "
            f"({gib(host.available)} GiB available, {gib(host.reserve)} GiB kept for the system).")


SMALLER_SIZES = ((1280, 720), (1024, 576), (832, 480), (640, 368), (480, 272))


def suggest_changes(plan: MemoryPlan, gpus: Sequence[Gpu], simulated: bool = False) -> list[str]:
    """Changes that would fit, each checked with the planner: fp8, offload, fewer frames, smaller size."""
    job, options, kind = plan.job, plan.options, plan.kind
    out: list[str] = []

    degrees = (plan.cfg_degree, plan.sequence_degree)

    def fits(k: str, j: JobSize, o: PlanOptions) -> MemoryPlan | None:
        if (k, o.weights) != (kind, options.weights):  # another placement or storage merges as it does
            o = replace(o, lora_merged=None)
        p = plan_memory(k, gpus, j, o, simulated=simulated, suggest=False, host=plan.host,
                        degrees=degrees if k == "cpu" else None)
        return p if p.verdict == "ok" else None

    def peak(p: MemoryPlan) -> str:
        return f"peak {gib(p.peak_device.peak)} GiB on {p.peak_device.device}"

    fp8 = replace(options, weights="fp8")
    if kind != "cpu" and options.weights == "bf16" and (p := fits(kind, job, fp8)):
        out.append(f"fp8 weights (--fp8), {peak(p)}")
    if kind == "cfg-parallel":  # 1/N of the activations per GPU
        for o, flag in ((options, "--placement sequence-parallel"), (fp8, "--placement sequence-parallel --fp8")):
            if o.weights != "fp32" and (p := fits("sequence-parallel", job, o)):
                out.append(f"sequence-parallel ({flag}), {peak(p)}")
                break
    if kind in ("shard", "single"):
        for o, flag in ((options, "--placement offload"), (fp8, "--placement offload --fp8")):
            if o.weights != "fp32" and (p := fits("offload", job, o)):
                out.append(f"offload ({flag}), {peak(p)}")
                break
    candidates = list(range(job.frames - TEMPORAL_COMPRESSION, 0, -TEMPORAL_COMPRESSION))
    lo, hi, best = 0, len(candidates) - 1, None
    while lo <= hi:  # fewer frames only lowers memory, so the search can bisect
        mid = (lo + hi) // 2
        if fits(kind, JobSize(job.width, job.height, candidates[mid]), options):
            best, hi = candidates[mid], mid - 1
        else:
            lo = mid + 1
    if best is not None:
        out.append(f"{best} frames instead of {job.frames}")
    landscape = job.width >= job.height
    for w, h in SMALLER_SIZES:
        w, h = (w, h) if landscape else (h, w)
        if w * h < job.width * job.height and fits(kind, JobSize(w, h, job.frames), options):
            out.append(f"{w}x{h} instead of {job.width}x{job.height}")
            break
    if not out and kind == "cpu":
        out.append("no smaller setting fits this machine's RAM; close other programs or use a GPU")
    elif not out:
        out.append("no smaller setting fits these GPUs; use a GPU with more free memory")
    return out
