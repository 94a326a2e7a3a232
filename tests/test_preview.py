"""The step preview: the published linear latent-to-RGB map, the small model's decoded strip, refitting."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pusa_core.job import Progress
from pusa_core.latents import decode_latents
from pusa_core.requests import Settings, TextToVideo
from pusa_core.preview import WAN21_LATENT_RGB, strip_frames, WAN21_LATENT_RGB_BIAS, decoded_strip, fit_latent_rgb, linear_strip
from pusa_core.sampling import StepReport, sample
from pusa_core.schedule import frame_multipliers
from pusa_core.tiny_models import random_tiny_components


def test_linear_strip_maps_each_channel_by_the_published_factors():
    latents = torch.zeros(1, 16, 5, 6, 8)
    latents[0, 6] = 1.0  # the channel with the largest negative factors: a dark frame
    strip = linear_strip(latents)
    assert strip.shape == (6, 4 * 8, 3) and strip.dtype == np.uint8
    expected = np.array(WAN21_LATENT_RGB[6]) + np.array(WAN21_LATENT_RGB_BIAS)
    assert np.allclose(strip[0, 0], np.round((expected + 1) * 127.5), atol=1)


def test_fit_recovers_a_known_linear_map():
    g = torch.Generator().manual_seed(0)
    factors, bias = torch.randn(16, 3, generator=g) * 0.1, torch.tensor([0.1, -0.2, 0.05])
    latents = torch.randn(2, 16, 3, 4, 5, generator=g)
    cells = torch.einsum("bcfhw,cr->brfhw", latents, factors) + bias.view(1, 3, 1, 1, 1)
    # Pixels: each latent cell spread over its 8x8 pixels, latent k>=1 standing for pixel frame 4k.
    pixels = torch.zeros(2, 3, 9, 32, 40)
    pixels[:, :, [0, 4, 8]] = F.interpolate(cells, size=(3, 32, 40), mode="nearest")
    fitted, fitted_bias = fit_latent_rgb(latents, pixels)
    assert torch.allclose(fitted, factors, atol=1e-4) and torch.allclose(fitted_bias, bias, atol=1e-4)


def test_the_strip_spreads_its_frames_from_first_to_last():
    assert strip_frames(21) == [0, 7, 13, 20] and strip_frames(3) == [0, 1, 2] and strip_frames(1) == [0]


def test_the_small_models_strip_is_decoded_by_its_own_vae():
    c = random_tiny_components()
    latents = torch.randn(1, c.vae.config.z_dim, 3, 8, 12)
    strip = decoded_strip(c.vae, latents, torch.device("cpu"))
    last = decode_latents(c.vae, latents[:, :, 2:3], torch.device("cpu"))[0, :, 0]  # [3, H, W]
    height, width = last.shape[1:]
    assert strip.shape == (height, 3 * width, 3) and strip.dtype == np.uint8
    expected = last.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(strip[:, 2 * width :], expected)


def test_the_last_steps_clean_estimate_is_the_result():
    c = random_tiny_components()
    noise = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 8, c.transformer.config.text_dim)
    reports: list[StepReport] = []
    result = sample(c.transformer, noise, {}, frame_multipliers(3, {}), text, None, 3, 1.0, callback=reports.append)
    assert [r.step for r in reports] == [1, 2, 3]
    # The schedule ends at sigma 0, so the last Euler step lands on its own clean estimate.
    assert torch.allclose(reports[-1].denoised, result.latents, atol=1e-6)
    assert not torch.allclose(reports[0].denoised, reports[0].latents)


def test_a_job_asked_for_a_preview_reports_one_each_step(tiny_engine):
    reports: list[Progress] = []
    settings = Settings(prompt="a red ball", width=64, height=64, num_frames=9, steps=3, seed=5)
    tiny_engine.generate(TextToVideo(settings), progress=reports.append, preview=True)
    strips = [p.preview for p in reports if p.preview is not None]
    assert [p.step for p in reports if p.preview is not None] == [1, 2, 3]
    assert all(s.dtype == np.uint8 and s.shape == (64, 3 * 64, 3) for s in strips)  # 3 latent frames, decoded
    reports.clear()
    tiny_engine.generate(TextToVideo(settings), progress=reports.append)
    assert all(p.preview is None for p in reports)
