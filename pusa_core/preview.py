"""Watch a video form: a small picture of the current clean-latent estimate at each denoising step.

For the 14B the picture is a fixed linear map from Wan2.1's 16 latent channels to RGB, as other
Wan apps preview; decoding with the real VAE every step would cost seconds. The factors are the
published Wan2.1 ones from ComfyUI (``comfy/latent_formats.py``, class ``Wan21``,
``latent_rgb_factors`` and ``latent_rgb_factors_bias``); they act on latents normalised by the VAE's
``latents_mean``/``latents_std``, which is the space this engine samples in.

Refitting them needs only the VAE: encode some clips, then :func:`fit_latent_rgb` solves the
least-squares map from each latent cell to the mean colour of the pixels it covers
(``python -m pusa_core.preview --refit VAE_DIR CLIP.mp4 ...`` prints the new 16x3 matrix and bias).
The small model previews with its own decoder (it is cheap there), see :func:`decoded_strip`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from .facts import TEMPORAL_COMPRESSION
from .latents import decode_latents, encode_pixels

WAN21_LATENT_RGB = (
    (-0.1299, -0.1692, 0.2932),
    (0.0671, 0.0406, 0.0442),
    (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328),
    (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925),
    (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636),
    (0.0680, 0.3019, 0.1128),
    (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699),
    (0.0060, -0.0633, 0.0005),
    (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861),
)
WAN21_LATENT_RGB_BIAS = (-0.1835, -0.0868, -0.3360)
STRIP_FRAMES = 4  # latent frames shown side by side: first, two between, last


def strip_frames(count: int, wanted: int = STRIP_FRAMES) -> list[int]:
    """``wanted`` latent frames spread from the first to the last (all of them when there are fewer)."""
    shown = min(wanted, count)
    return sorted({round(i * (count - 1) / max(1, shown - 1)) for i in range(shown)})


def _to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """``[F, 3, h, w]`` in [-1, 1] -> one strip ``[h, F*w, 3]`` uint8."""
    strip = torch.cat(list(rgb.clamp(-1, 1)), dim=-1)  # [3, h, F*w]
    return strip.add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def linear_strip(
    latents: torch.Tensor,
    factors: Sequence[Sequence[float]] = WAN21_LATENT_RGB,
    bias: Sequence[float] = WAN21_LATENT_RGB_BIAS,
    frames: int = STRIP_FRAMES,
) -> np.ndarray:
    """Latents ``[1, C, F, h, w]`` -> an RGB strip of a few latent frames at latent resolution (uint8)."""
    picked = latents[0, :, strip_frames(latents.shape[2], frames)].float()  # [C, f, h, w]
    matrix = torch.tensor(factors, dtype=torch.float32, device=picked.device)  # [C, 3]
    rgb = torch.einsum("cfhw,cr->frhw", picked, matrix) + torch.tensor(bias, device=picked.device).view(1, 3, 1, 1)
    return _to_uint8(rgb)


@torch.no_grad()
def decoded_strip(vae: AutoencoderKLWan, latents: torch.Tensor, device: torch.device, frames: int = STRIP_FRAMES) -> np.ndarray:
    """The same strip through the real decoder: each picked latent frame decoded alone (for small models)."""
    picked = strip_frames(latents.shape[2], frames)
    rgb = [decode_latents(vae, latents[:, :, i : i + 1], device)[0, :, 0] for i in picked]  # [3, H, W] each
    return _to_uint8(torch.stack(rgb))


def fit_latent_rgb(latents: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``rgb ~ latent @ factors + bias`` from encoded clips.

    ``latents`` ``[B, C, F, h, w]`` (normalised) and the ``pixels`` ``[B, 3, T, H, W]`` in [-1, 1] they
    came from. Each latent cell is paired with the mean colour of the pixels it covers (the last of
    the 4 frames behind each latent after the first). Returns ``factors [C, 3]`` and ``bias [3]``.
    """
    frames = [0] + [TEMPORAL_COMPRESSION * k for k in range(1, latents.shape[2])]
    target = F.adaptive_avg_pool3d(pixels[:, :, frames].float(), latents.shape[2:])  # [B, 3, F, h, w]
    x = latents.float().permute(0, 2, 3, 4, 1).reshape(-1, latents.shape[1])
    y = target.permute(0, 2, 3, 4, 1).reshape(-1, 3)
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution  # [C + 1, 3]
    return solution[:-1], solution[-1]


def _refit(vae_dir: Path, clips: Sequence[Path]) -> None:
    from .media import read_video, to_model_pixels

    vae = AutoencoderKLWan.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
    latents, pixels = [], []
    for clip in clips:
        frames, _ = read_video(clip, max_frames=1 + TEMPORAL_COMPRESSION * 4)
        x = to_model_pixels(frames)
        pixels.append(x)
        latents.append(encode_pixels(vae, x, torch.device("cpu")))
    factors, bias = fit_latent_rgb(torch.cat(latents), torch.cat(pixels))
    print("factors =", [[round(v, 4) for v in row] for row in factors.tolist()])
    print("bias =", [round(v, 4) for v in bias.tolist()])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Refit the latent-to-RGB preview factors from a Wan VAE and some clips.")
    parser.add_argument("--refit", type=Path, required=True, metavar="VAE_DIR", help="a diffusers AutoencoderKLWan folder")
    parser.add_argument("clips", type=Path, nargs="+", help="video files of the same size (17 frames are read from each)")
    args = parser.parse_args(argv)
    missing = [str(c) for c in args.clips if not c.is_file()]
    if missing:
        sys.exit(f"preview: clips not found: {', '.join(missing)}")
    _refit(args.refit, args.clips)


if __name__ == "__main__":
    main()
