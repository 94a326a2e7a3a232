"""Flow-matching training math, scalar (plain Wan) and frame-aware (Pusa's FAFM), as pure functions.

Rectified flow: ``x_t = (1 - s) x0 + s noise`` and the model predicts the velocity ``noise - x0``
at timestep ``1000 s``. Plain flow matching draws one ``s`` per sample; frame-aware flow matching
draws an independent ``s`` for every latent frame of every sample, so the model learns to denoise
frames that sit at different noise levels in one pass (what the sampler needs when some frames are
given and others generated).
"""

from __future__ import annotations

import torch

from ..schedule import NUM_TRAIN_TIMESTEPS


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Warp uniform ``u`` in [0, 1] towards high noise: ``shift*u / (1 + (shift-1)*u)`` (identity at shift 1)."""
    return shift * u / (1 + (shift - 1) * u)


def sample_sigmas(
    batch: int,
    frames: int,
    per_frame: bool,
    generator: torch.Generator | None = None,
    shift: float = 1.0,
    clean_prob: float = 0.0,
    sync_prob: float = 0.0,
    prefix_prob: float = 0.0,
) -> torch.Tensor:
    """Sigmas ``[batch, frames]``.

    ``per_frame=False`` repeats one sigma per sample over its frames (plain flow matching);
    ``per_frame=True`` draws every frame independently (FAFM). Three optional FAFM mixes, all off by
    default: ``sync_prob`` gives a sample one shared sigma (keeps plain text-to-video in the data),
    ``clean_prob`` sets single frames exactly to 0 (the clean conditioning frames the sampler uses) and
    ``prefix_prob`` sets the first 1 to ``frames - 1`` frames of a sample to 0 (image-to-video and
    extension: the frames after a clean prefix are the rarest case of independent draws).
    """
    if per_frame:
        u = torch.rand(batch, frames, generator=generator)
        shared = torch.rand(batch, 1, generator=generator).expand(batch, frames)
        sync = torch.rand(batch, 1, generator=generator) < sync_prob
        u = torch.where(sync, shared, u)
        clean = (torch.rand(batch, frames, generator=generator) < clean_prob) & ~sync
        if prefix_prob and frames > 1:
            length = torch.randint(1, frames, (batch, 1), generator=generator)
            prefixed = (torch.rand(batch, 1, generator=generator) < prefix_prob) & ~sync
            clean |= prefixed & (torch.arange(frames) < length)
        # Keep at least one frame to learn from in every sample (the last is never in a prefix).
        clean[clean.all(dim=1), -1] = False
        sigmas = shift_sigmas(u, shift)
        return sigmas.masked_fill(clean, 0.0)
    u = torch.rand(batch, 1, generator=generator).expand(batch, frames)
    return shift_sigmas(u, shift).contiguous()


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-frame interpolation ``(1 - s_f) x0 + s_f noise`` for latents ``[B, C, F, H, W]`` and sigmas ``[B, F]``."""
    s = sigmas[:, None, :, None, None].to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target ``noise - x0``."""
    return noise - x0


def timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """Model timesteps for sigmas (``1000 s``), the same convention as the sampler."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def flow_loss(
    prediction: torch.Tensor, target: torch.Tensor, sigmas: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over frames with ``s > 0``, optionally weighted per latent position.

    A frame at exactly ``s = 0`` is its clean latent: the noise in its target cannot be inferred, so
    it is context for the other frames and not a regression target. ``weights`` ``[B, 1, F, h, w]``
    scale each position's error (a weighted mean, so the loss keeps its scale).
    """
    weight = (sigmas > 0).to(prediction.dtype)[:, None, :, None, None]
    if weights is not None:
        weight = weight * weights.to(prediction.dtype)
    weight = weight.expand_as(prediction)
    per_element = (prediction.float() - target.float()).pow(2) * weight
    return per_element.sum() / weight.sum().clamp_min(1e-8)
