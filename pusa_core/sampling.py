"""The Pusa denoising loop: per-frame sigmas, classifier-free guidance, Euler steps.

Kept deliberately small so it can be read against the reference line by line. Latents stay float32;
only the transformer's input is cast to its dtype.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .errors import GenerationCancelled
from .facts import DEFAULT_SHIFT
from .schedule import frame_sigmas, frame_timesteps, noised_conditioning, shifted_sigmas


@dataclass(frozen=True)
class StepReport:
    """What the loop tells its caller after each step."""

    step: int  # steps finished so far, 1-based
    total: int
    latents: torch.Tensor
    seconds: float  # since the loop started


StepCallback = Callable[[StepReport], None]


@dataclass(frozen=True)
class SampleResult:
    latents: torch.Tensor
    seconds: float
    step_seconds: tuple[float, ...]


def initial_latents(
    noise: torch.Tensor, cond_latents: Mapping[int, torch.Tensor], multipliers: torch.Tensor
) -> torch.Tensor:
    """Noise everywhere; conditioning slots start from their clean latent noised by their multiplier."""
    latents = noise.clone()
    for index, clean in cond_latents.items():
        latents[:, :, index : index + 1] = noised_conditioning(
            clean.to(noise), noise[:, :, index : index + 1], float(multipliers[index])
        )
    return latents


def guided_velocity(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    cfg: float,
) -> torch.Tensor:
    """``neg + cfg * (pos - neg)`` for every frame; one pass when cfg == 1 or there is no negative."""
    dtype = transformer.dtype
    x = latents.to(dtype)
    pos = transformer(x, timestep, positive.to(dtype), return_dict=False)[0].float()
    if cfg == 1.0 or negative is None:
        return pos
    neg = transformer(x, timestep, negative.to(dtype), return_dict=False)[0].float()
    return neg + cfg * (pos - neg)


@torch.no_grad()
def sample(
    transformer: torch.nn.Module,
    noise: torch.Tensor,
    cond_latents: Mapping[int, torch.Tensor],
    multipliers: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    steps: int,
    cfg: float,
    shift: float = DEFAULT_SHIFT,
    callback: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> SampleResult:
    """Denoise ``noise`` ``[B, C, F, H, W]`` with per-frame multipliers ``[F]`` and return the final latents.

    ``cancel`` is checked before every step; when set, :class:`GenerationCancelled` is raised.
    """
    if multipliers.shape != (noise.shape[2],):
        raise ValueError(f"multipliers must have one entry per latent frame ({noise.shape[2]}), got {tuple(multipliers.shape)}")
    device = noise.device
    multipliers = multipliers.to(device=device, dtype=torch.float32)
    sig = frame_sigmas(shifted_sigmas(steps, shift).to(device), multipliers)  # [steps + 1, F]
    latents = initial_latents(noise.float(), cond_latents, multipliers)
    batch = latents.shape[0]

    start = time.perf_counter()
    step_seconds = []
    for i in range(steps):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled(f"cancelled before step {i + 1} of {steps}")
        t0 = time.perf_counter()
        timestep = frame_timesteps(sig[i]).expand(batch, -1)
        velocity = guided_velocity(transformer, latents, timestep, positive, negative, cfg)
        dt = (sig[i + 1] - sig[i]).view(1, 1, -1, 1, 1)
        latents = latents + velocity * dt
        step_seconds.append(time.perf_counter() - t0)
        if callback is not None:
            callback(StepReport(i + 1, steps, latents, time.perf_counter() - start))
    return SampleResult(latents, time.perf_counter() - start, tuple(step_seconds))
