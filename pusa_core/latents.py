"""VAE encode/decode with Wan's latent normalization ``(z - mean) / std``."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan


def _stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=like.dtype, device=like.device).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=like.dtype, device=like.device).view(shape)
    return mean, std


def _device(vae: AutoencoderKLWan, device: torch.device | None) -> torch.device:
    return device or next(vae.parameters()).device


@torch.no_grad()
def encode_pixels(vae: AutoencoderKLWan, pixels: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Pixels ``[B, 3, T, H, W]`` in [-1, 1] -> normalized latents (posterior mode), float32, on ``device``."""
    x = pixels.to(device=_device(vae, device), dtype=vae.dtype)
    z = vae.encode(x).latent_dist.mode().float()
    mean, std = _stats(vae, z)
    return (z - mean) / std


@torch.no_grad()
def decode_latents(vae: AutoencoderKLWan, latents: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Normalized latents -> pixels ``[B, 3, T, H, W]`` in [-1, 1], float32."""
    z = latents.to(device=_device(vae, device), dtype=torch.float32)
    mean, std = _stats(vae, z)
    pixels = vae.decode((z * std + mean).to(vae.dtype)).sample
    return pixels.float().clamp(-1, 1)
