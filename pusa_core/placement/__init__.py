"""Where the models run: GPUs -> a placement checked by a memory plan, with a predicted step time.

- ``shard`` (default with two or more GPUs): the transformer's blocks are split over the GPUs by
  accelerate (balanced, a block is never split); its hooks move each block's inputs, including
  the per-frame modulation ``[B, F, 6, D]``, to that block's device.
- ``single``: everything on one GPU, when the whole job fits.
- ``offload``: diffusers group offloading streams the blocks to one GPU; optionally fp8 weights.
- ``cpu``: float32 on the CPU, for the small model and tests; jobs are planned against the RAM
  available when they are planned.
- ``cfg-parallel`` / ``sequence-parallel``: one process per GPU (torchrun), each with the whole
  transformer; each rank runs one of a step's two guidance passes, or 1/N of every pass's tokens
  (:mod:`pusa_core.parallel`). ``Placement.cfg_degree`` / ``sequence_degree`` say how.

One job per module: ``devices`` (GPUs and RAM, detected or simulated), ``models`` (exact weight
bytes from meta-device models), ``activations`` (the job's size and working sets), ``loads`` (the
plan's types), ``layouts`` (what goes where per kind), ``planner`` (the verdict and suggestions),
``speed`` (the predicted step time), ``choose`` (the placement for this machine) and ``apply``
(putting loaded components there).
The requested kind is a plain argument: callers read ``--placement`` / ``PUSA_PLACEMENT``.
"""

from .activations import JobSize
from .apply import StageDevices, apply_placement, apply_vae_tiling
from .choose import ENV_VAR, REFERENCE_JOB, Placement, choose_placement, plan_job, predict_step, requested_kind
from .devices import GIB, Gpu, Host, detect_gpus, detect_host, gib, simulated_gpus, simulated_host
from .layouts import KINDS, PARALLEL_KINDS
from .loads import DeviceLoad, MemoryPlan
from .models import PlanOptions
from .planner import plan_memory
from .speed import DEFAULT_LINK, LINKS, StepTime

__all__ = [
    "DEFAULT_LINK", "ENV_VAR", "GIB", "KINDS", "LINKS", "PARALLEL_KINDS", "DeviceLoad", "Gpu", "Host", "JobSize",
    "MemoryPlan", "Placement", "PlanOptions", "REFERENCE_JOB", "StageDevices", "StepTime", "apply_placement",
    "apply_vae_tiling", "choose_placement", "detect_gpus", "detect_host", "gib", "plan_job", "plan_memory",
    "predict_step", "requested_kind", "simulated_gpus", "simulated_host",
]
