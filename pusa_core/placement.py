"""Where the models run: GPUs -> a placement plan (shard / single / offload / cpu), and applying it.

- ``shard`` (default with two or more GPUs): the transformer's blocks are split over the GPUs by
  accelerate (balanced, a block is never split); its hooks move each block's inputs, including
  the per-frame modulation ``[B, F, 6, D]``, to that block's device.
- ``single``: everything on one GPU, when the whole job fits.
- ``offload``: diffusers group offloading streams the blocks to one GPU (CUDA streams overlap the
  copies with compute); optionally fp8 weight storage.
- ``cpu``: float32 on the CPU, for the small model and tests; jobs are planned against the RAM
  available when they are planned.

The choice is made with the memory planner (``pusa_core.memory``) for a reference job, and the
reason is kept so the app can tell the user which placement is used and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from accelerate import dispatch_model
from diffusers.hooks import apply_group_offloading

from .errors import PusaInputError
from .memory import (GIB, Gpu, Host, JobSize, MemoryPlan, PlanOptions, detect_host, enable_fp8_storage, gib,
                     plan_memory, suggest_changes)

KINDS = ("shard", "single", "offload", "cpu")
ENV_VAR = "PUSA_PLACEMENT"
# The split is planned once, at load, for the largest job Pusa is run at: 720p, 81 frames.
REFERENCE_JOB = JobSize(1280, 720, 81)


def detect_gpus() -> list[Gpu]:
    """The visible CUDA GPUs with their name, total and currently free memory."""
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(Gpu(index, torch.cuda.get_device_name(index), total, free))
    return gpus


def simulated_gpus(sizes_gb: Sequence[float]) -> list[Gpu]:
    """GPUs of the given sizes, all memory free. Sizes are the cards' nominal GB, which is what
    nvidia-smi reports in GiB (a "48 GB" card has 47.99 GiB)."""
    gpus = []
    for index, size in enumerate(sizes_gb):
        if not size > 0:
            raise PusaInputError("gpus", f"GPU {index} has size {size!r}; give positive GB, e.g. 48,48")
        gpus.append(Gpu(index, f"simulated {size:g} GB", int(size * GIB), int(size * GIB)))
    return gpus


def simulated_host(size_gb: float) -> Host:
    """A machine with ``size_gb`` GiB of RAM, all of it available (for plans and tests)."""
    if isinstance(size_gb, bool) or not isinstance(size_gb, (int, float)) or not size_gb > 0:
        raise PusaInputError("ram", f"{size_gb!r} is not a RAM size; give positive GB, e.g. 32")
    return Host(f"simulated {size_gb:g} GB RAM", int(size_gb * GIB), int(size_gb * GIB))


def requested_kind(requested: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The placement asked for by argument or ``PUSA_PLACEMENT`` (argument wins); None: automatic."""
    env = os.environ if env is None else env
    source, value = ("placement", requested) if requested else (ENV_VAR, env.get(ENV_VAR, ""))
    value = value.strip().lower()
    if value in ("", "auto"):
        return None
    if value not in KINDS:
        raise PusaInputError(source, f"{value!r} is not a placement; use one of auto, {', '.join(KINDS)}")
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
                     options: PlanOptions | None = None, env: Mapping[str, str] | None = None,
                     simulated: bool = False, host: Host | None = None) -> Placement:
    """Pick shard / single / offload / cpu for these GPUs and ``job``, or honour the override.

    Automatic: shard with two or more GPUs, single when the job fits one GPU, offload otherwise,
    cpu without CUDA. When sharding or a single GPU is predicted not to fit but offloading does,
    offload is chosen and the reason says so. ``host`` simulates the machine's RAM for cpu plans.
    """
    options = options or PlanOptions()
    gpus = tuple(gpus)
    kind = requested_kind(requested, env)
    if kind is not None:
        if kind == "cpu" and options.weights == "fp8":
            raise PusaInputError("fp8", "fp8 weights need a GPU; the cpu placement runs in float32")
        plan = plan_memory(kind, gpus, job, options, simulated=simulated, host=host)
        why = f"{kind} requested ({'--placement' if requested else ENV_VAR})"
        return Placement(kind, gpus, why, plan, simulated, host)
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


@dataclass(frozen=True)
class StageDevices:
    """Where each stage's inputs must be: token ids, latents / text states, latents to decode."""

    text_device: torch.device
    transformer_device: torch.device
    vae_device: torch.device


def dispatch_transformer(transformer: torch.nn.Module, device_map: Mapping[str, int | str],
                         offload_dir: str | Path | None = None) -> torch.device:
    """Split the transformer with accelerate hooks; returns the device of its patch embedding.

    ``force_hooks`` keeps the hooks even when the map names a single device, so the same path runs
    everywhere (every block's inputs are moved to the block's device).
    """
    dispatch_model(transformer, device_map=dict(device_map), offload_dir=offload_dir, force_hooks=True)
    return _execution_device(transformer.patch_embedding)


def _execution_device(module: torch.nn.Module) -> torch.device:
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return next(module.parameters()).device


def offload_transformer(transformer: torch.nn.Module, device: torch.device, use_stream: bool | None = None) -> None:
    """diffusers group offloading, one block per group; CUDA streams prefetch the next block."""
    use_stream = device.type == "cuda" if use_stream is None else use_stream
    transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                     offload_type="block_level", num_blocks_per_group=1, use_stream=use_stream)


def stream_text_encoder(text_encoder: torch.nn.Module, device: torch.device, use_stream: bool | None = None) -> None:
    """Group offloading of the text encoder leaf by leaf: only a layer or two is on the GPU at once."""
    use_stream = device.type == "cuda" if use_stream is None else use_stream
    apply_group_offloading(text_encoder, onload_device=device, offload_type="leaf_level", use_stream=use_stream)


def apply_placement(placement: Placement, transformer: torch.nn.Module, text_encoder: torch.nn.Module,
                    vae: torch.nn.Module, offload_dir: str | Path | None = None) -> StageDevices:
    """Put loaded (bf16, or any dtype for cpu) components where the placement says."""
    if placement.simulated:
        raise PusaInputError("gpus", "a plan for simulated GPUs cannot be applied; detect the real ones")
    plan = placement.memory
    if placement.kind == "cpu":
        cpu = torch.device("cpu")
        for module in (transformer, text_encoder, vae):
            # float() rather than to(dtype): diffusers warns on to(dtype) even when nothing changes.
            module.to(cpu).float()
        return StageDevices(cpu, cpu, cpu)
    if placement.fp8:
        enable_fp8_storage(transformer)
    if placement.kind == "shard":
        transformer_device = dispatch_transformer(transformer, plan.device_map, offload_dir)
    elif placement.kind == "single":
        transformer_device = torch.device(plan.devices[0].device)
        transformer.to(transformer_device)
    else:
        transformer_device = torch.device(plan.devices[0].device)
        offload_transformer(transformer, transformer_device)
    text_device = torch.device(plan.text_device)
    if plan.text_streamed:
        stream_text_encoder(text_encoder, text_device)
    else:
        text_encoder.to(text_device)
    vae_device = torch.device(plan.vae_device)
    vae.to(vae_device)
    apply_vae_tiling(vae, plan)
    return StageDevices(text_device, transformer_device, vae_device)


def apply_vae_tiling(vae: torch.nn.Module, plan: MemoryPlan) -> None:
    """Tile the VAE decode for this job only when the plan says the untiled decode would not fit."""
    if plan.vae_tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
