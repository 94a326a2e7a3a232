"""ZeroGPU support: on a ZeroGPU Space, run the generate function under ``spaces.GPU``.

ZeroGPU lends a GPU per call for a duration the Space asks for up front; asking too little kills
the job, asking too much costs the visitor's quota and queue priority. ``zerogpu_duration``
estimates it from the job size (model below). Everywhere else the function is returned unchanged,
and ``spaces`` is imported only on ZeroGPU, when this module loads: import it before torch.

Duration model, for the 14B transformer on ZeroGPU's default "large" slice (half an H200):
one forward pass over ``N = latent_frames * (height/16) * (width/16)`` tokens costs about
``2 * 14e9 * N`` FLOPs in the linear layers plus ``4 * N**2 * 5120 * 40`` in attention, run at an
effective 150 TFLOP/s; a step is two passes with CFG (> 1) and one without, less the passes a step
cache is sure to skip (TaylorSeer's fixed schedule; first-block's skips are not known in advance, so
they are not counted). The preset sets the steps and guidance: Fast's 4 steps at cfg 1 are 4 passes
against Quality's 20. On ZeroGPU the LoRAs are merged into the weights (the placement is ``single``),
so a pass costs what plain Wan's does and no LoRA term is added. Add 20 s for prompt
encoding and moving weights, and the VAE decode at ~30 s for 81 frames of 832x480 (scaled by
pixels), then 20 % headroom, clamped to [60 s, 2400 s] (2400 s = the longest task ZeroGPU grants,
40 min for PRO accounts). Examples: 17 frames 832x480, 4 steps -> 60 s (the floor);
81 frames 832x480, 10 steps, CFG 5 (Quality) -> 348 s; the same with the Fast preset (4 steps,
cfg 1) -> 118 s; Quality with ``taylorseer:2`` -> 262 s; 81 frames 1280x720, 50 steps -> 2400 s
(the cap: too long for ZeroGPU, use a dedicated GPU).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pusa_core import facts
from pusa_core.cache_choice import full_passes, parse_step_cache
from pusa_core.errors import PusaInputError

F = TypeVar("F", bound=Callable[..., Any])

MIN_SECONDS = 60
MAX_SECONDS = 2400
_FLOPS_PER_SECOND = 150e12
_OVERHEAD_SECONDS = 20.0
_DECODE_SECONDS_REF = 30.0  # VAE decode of the reference video below
_DECODE_PIXELS_REF = facts.DEFAULT_FRAMES * facts.DEFAULT_WIDTH * facts.DEFAULT_HEIGHT
_HEADROOM = 1.2


@dataclass(frozen=True)
class ZeroGpuJob:
    """The numbers of a job that set how long it holds the ZeroGPU slice."""

    steps: int
    num_frames: int
    width: int
    height: int
    cfg: float
    step_cache: str = facts.STEP_CACHE_OFF


def on_zerogpu() -> bool:
    """True on a ZeroGPU Space: a Space (``SPACE_ID``) with ``SPACES_ZERO_GPU`` set and ``spaces`` installed."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").strip().lower()
    return (
        bool(os.environ.get("SPACE_ID"))
        and flag in ("1", "t", "true")
        and importlib.util.find_spec("spaces") is not None
    )


def _check_job(steps: int, num_frames: int, width: int, height: int, cfg: float) -> None:
    """Refuse what the engine refuses (the limits in ``pusa_core.facts``): such a job gets no estimate."""
    for limit, value in ((facts.STEPS, steps), (facts.FRAMES, num_frames), (facts.CFG, cfg)):
        if problem := limit.check(value):
            raise PusaInputError(limit.field, problem)
    if not facts.is_frame_count(num_frames):
        raise PusaInputError(facts.FRAMES.field, f"must be 4k+1 (e.g. 17, 49, 81), got {num_frames!r}")
    for name, value in (("width", width), ("height", height)):
        if problem := facts.SIDE.check(value):
            raise PusaInputError(name, problem)
        if value % facts.SIZE_MULTIPLE:
            raise PusaInputError(name, f"must be a multiple of {facts.SIZE_MULTIPLE}, got {value!r}")


def zerogpu_duration(steps: int, num_frames: int, width: int, height: int, cfg: float,
                     step_cache: str = facts.STEP_CACHE_OFF) -> int:
    """Seconds of GPU time to request for one job (see the module docstring for the model)."""
    _check_job(steps, num_frames, width, height, cfg)
    tokens = facts.latent_tokens(width, height, num_frames)
    flops = facts.pass_flops(tokens)
    denoise = full_passes(steps, cfg, parse_step_cache(step_cache)) * flops / _FLOPS_PER_SECOND
    decode = _DECODE_SECONDS_REF * num_frames * width * height / _DECODE_PIXELS_REF
    seconds = (_OVERHEAD_SECONDS + denoise + decode) * _HEADROOM
    return int(min(MAX_SECONDS, max(MIN_SECONDS, math.ceil(seconds))))


def duration_for(job_size: Callable[..., ZeroGpuJob]) -> Callable[..., int]:
    """The ``spaces.GPU(duration=...)`` callable: same arguments as the wrapped function."""

    def duration(*args: Any, **kwargs: Any) -> int:
        try:
            job = job_size(*args, **kwargs)
            return zerogpu_duration(job.steps, job.num_frames, job.width, job.height, job.cfg, job.step_cache)
        except (TypeError, ValueError):
            # A bad input: the wrapped function rejects it with its own message in seconds.
            return MIN_SECONDS

    return duration


if on_zerogpu():
    # spaces must load before anything initialises CUDA (it patches torch so that the GPU exists only
    # inside GPU calls), so app.py imports this module before torch and the engine.
    import spaces  # noqa: F401


def wrap_for_zerogpu(fn: F, job_size: Callable[..., ZeroGpuJob]) -> F:
    """``spaces.GPU(fn, duration=...)`` on ZeroGPU, ``fn`` itself elsewhere.

    ``job_size`` takes ``fn``'s arguments and returns the ``ZeroGpuJob`` they ask for; ZeroGPU calls
    it before each call of ``fn`` to choose the duration.
    """
    if not on_zerogpu():
        return fn
    import spaces  # already loaded at module import on ZeroGPU

    return spaces.GPU(fn, duration=duration_for(job_size))
