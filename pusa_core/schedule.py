"""Pure schedule math for Pusa's flow-matching sampler.

Every latent frame f carries a noise multiplier m_f (1 for frames the model generates freely, less
for conditioning frames). At step i frame f sits at sigma ``m_f * s_i`` and the model sees timestep
``1000 * m_f * s_i``; a frame with m_f = 0 stays at sigma 0 and never moves.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .facts import DEFAULT_SHIFT

NUM_TRAIN_TIMESTEPS = 1000


def shifted_sigmas(steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """Sigmas ``[steps + 1]``: ``s = linspace(1, 0, steps+1)[:-1]``, shifted ``shift*s / (1 + (shift-1)*s)``, then 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    s = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    s = shift * s / (1 + (shift - 1) * s)
    return torch.cat([s, s.new_zeros(1)])


def frame_multipliers(num_latent_frames: int, conditioning: Mapping[int, float]) -> torch.Tensor:
    """Noise multiplier per latent frame ``[F]``: 1 everywhere except the conditioned positions."""
    m = torch.ones(num_latent_frames)
    for index, multiplier in conditioning.items():
        m[index] = multiplier
    return m


def frame_sigmas(sigmas: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """Per-step, per-frame sigmas ``[steps + 1, F]`` = ``sigmas[i] * multipliers[f]``."""
    return sigmas[:, None] * multipliers[None, :]


def frame_timesteps(frame_sigma: torch.Tensor) -> torch.Tensor:
    """Model timesteps for per-frame sigmas (exact floats, no rounding)."""
    return frame_sigma * NUM_TRAIN_TIMESTEPS


def noised_conditioning(clean: torch.Tensor, noise: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Starting value of a conditioning frame: ``(1-m)*clean + m*noise`` (just ``clean`` when m = 0)."""
    if multiplier == 0:
        return clean.clone()
    return (1 - multiplier) * clean + multiplier * noise
