"""ZeroGPU support: on a ZeroGPU Space, run the generate function under ``spaces.GPU``.

ZeroGPU lends a GPU per call for a duration the Space asks for up front; asking too little kills
the job, asking too much costs the visitor's quota and queue priority. ``zerogpu_duration``
estimates it from the job size (model below). Everywhere else the function is returned unchanged,
and ``spaces`` is imported only on ZeroGPU, when this module loads: import it before torch.

Duration model, for the 14B transformer on ZeroGPU's default "large" slice (half an H200):
one forward pass over ``N = latent_frames * (height/16) * (width/16)`` tokens costs about
``2 * 14e9 * N`` FLOPs in the linear layers plus ``4 * N**2 * 5120 * 40`` in attention, run at an
effective 150 TFLOP/s; a step is two passes with CFG (> 1) and one without. Add 20 s for prompt
encoding and moving weights, and the VAE decode at ~30 s for 81 frames of 832x480 (scaled by
pixels), then 20 % headroom, clamped to [60 s, 2400 s] (2400 s = the longest task ZeroGPU grants,
40 min for PRO accounts). Examples: 17 frames 832x480, 4 steps -> 60 s (the floor);
81 frames 832x480, 10 steps, CFG 5 -> 348 s; 81 frames 1280x720, 50 steps -> 2400 s (the cap: too
long for ZeroGPU, use a dedicated GPU).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

MIN_SECONDS = 60
MAX_SECONDS = 2400
_PARAMS = 14e9
_HIDDEN = 5120
_LAYERS = 40
_FLOPS_PER_SECOND = 150e12
_OVERHEAD_SECONDS = 20.0
_DECODE_SECONDS_REF = 30.0  # VAE decode of the reference video below
_DECODE_PIXELS_REF = 81 * 832 * 480
_HEADROOM = 1.2


@dataclass(frozen=True)
class JobSize:
    """The numbers of a job that set how long it holds the GPU."""

    steps: int
    frames: int
    width: int
    height: int
    cfg: float


def on_zerogpu() -> bool:
    """True on a ZeroGPU Space: a Space (``SPACE_ID``) with ``SPACES_ZERO_GPU`` set and ``spaces`` installed."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").strip().lower()
    return (
        bool(os.environ.get("SPACE_ID"))
        and flag in ("1", "t", "true")
        and importlib.util.find_spec("spaces") is not None
    )


def zerogpu_duration(steps: int, frames: int, width: int, height: int, cfg: float) -> int:
    """Seconds of GPU time to request for one job (see the module docstring for the model)."""
    if steps < 1:
        raise ValueError(f"steps: {steps} must be at least 1")
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frames: {frames} must be 4k+1 (e.g. 17, 49, 81)")
    if width < 16 or height < 16:
        raise ValueError(f"width/height: {width}x{height} must be at least 16x16")
    latent_frames = (frames - 1) // 4 + 1
    tokens = latent_frames * (height // 16) * (width // 16)
    flops = 2 * _PARAMS * tokens + 4 * tokens**2 * _HIDDEN * _LAYERS
    passes = 2 if cfg > 1 else 1
    denoise = steps * passes * flops / _FLOPS_PER_SECOND
    decode = _DECODE_SECONDS_REF * frames * width * height / _DECODE_PIXELS_REF
    seconds = (_OVERHEAD_SECONDS + denoise + decode) * _HEADROOM
    return int(min(MAX_SECONDS, max(MIN_SECONDS, math.ceil(seconds))))


def job_size_by_name(fn: Callable[..., Any]) -> Callable[..., JobSize]:
    """Read a ``JobSize`` from a call of ``fn`` through its parameters named after the fields."""
    signature = inspect.signature(fn)
    missing = [name for name in JobSize.__dataclass_fields__ if name not in signature.parameters]
    if missing:
        raise TypeError(
            f"wrap_for_zerogpu: {fn.__qualname__} has no parameter(s) {', '.join(missing)}; "
            "pass job_size= to say how to read the job size from its arguments"
        )

    def job_size(*args: Any, **kwargs: Any) -> JobSize:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        return JobSize(
            int(values["steps"]),
            int(values["frames"]),
            int(values["width"]),
            int(values["height"]),
            float(values["cfg"]),
        )

    return job_size


def duration_for(job_size: Callable[..., JobSize]) -> Callable[..., int]:
    """The ``spaces.GPU(duration=...)`` callable: same arguments as the wrapped function."""

    def duration(*args: Any, **kwargs: Any) -> int:
        try:
            job = job_size(*args, **kwargs)
            return zerogpu_duration(job.steps, job.frames, job.width, job.height, job.cfg)
        except (TypeError, ValueError):
            # A bad input: the wrapped function rejects it with its own message in seconds.
            return MIN_SECONDS

    return duration


if on_zerogpu():
    # spaces must load before anything initialises CUDA (it patches torch so that the GPU exists only
    # inside GPU calls), so app.py imports this module before torch and the engine.
    import spaces  # noqa: F401


def wrap_for_zerogpu(fn: F, job_size: Callable[..., JobSize] | None = None) -> F:
    """``spaces.GPU(fn, duration=...)`` on ZeroGPU, ``fn`` itself elsewhere.

    ``job_size`` maps ``fn``'s arguments to a ``JobSize``; by default they are read from
    parameters named ``steps``, ``frames``, ``width``, ``height`` and ``cfg``. The mapping is
    checked everywhere, so a handler that ZeroGPU could not size fails on a laptop too.
    """
    sizer = job_size if job_size is not None else job_size_by_name(fn)
    if not on_zerogpu():
        return fn
    import spaces  # already loaded at module import on ZeroGPU

    return spaces.GPU(fn, duration=duration_for(sizer))
