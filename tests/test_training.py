"""The small-model training recipe: procedural data, FAFM math, LoRA layout, make_tiny and evaluate end to end."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from pusa_core.lora import load_lora, set_lora_alpha
from pusa_core.training import evaluate, make_tiny, train
from pusa_core.training.data import DIRECTIONS, OBJECT_COLOURS, caption, make_clip, vocabulary
from pusa_core.training.fafm import flow_loss, noisy_latents, sample_sigmas, timesteps, velocity_target
from pusa_core.training.cache import LatentCache
from pusa_core.training.lora_layout import DIFFUSERS_TO_WAN, pusa_lora_state_dict, to_pusa_layout
from pusa_core.training.tracking import intact, linear_fit_rms, track
from pusa_core.training.train import TransformerConfig, VaeConfig, latent_mask, lone_frame_latents, train_transformer, vae_loss
from pusa_core.tiny_models import SMALL_VAE, TINY_TRANSFORMER, tiny_transformer, tiny_vae
from pusa_core.transformer import PusaTransformer3DModel

# ---- data -----------------------------------------------------------------------------------


def test_clip_shapes_range_and_determinism() -> None:
    clip = make_clip(7)
    assert clip.pixels.shape == (3, 17, 64, 64)
    assert clip.pixels.min() >= -1 and clip.pixels.max() <= 1
    assert clip.positions.shape == (17, 2)
    assert torch.equal(make_clip(7).pixels, clip.pixels)
    assert not torch.equal(make_clip(8).pixels, clip.pixels)


def test_caption_is_written_from_the_parameters() -> None:
    words = set(vocabulary())
    for seed in range(40):
        clip = make_clip(seed)
        spec = clip.spec
        assert clip.caption == caption(spec)
        assert clip.caption.startswith(f"a {spec.colour} {spec.shape} moves {spec.direction}")
        assert clip.caption.endswith(f"{spec.background} background")
        assert ("bounces back" in clip.caption) == spec.bounces
        assert spec.colour != spec.background
        assert set(clip.caption.split()) <= words


def test_motion_is_straight_or_one_bounce_and_stays_inside() -> None:
    seen = {True: 0, False: 0}
    for seed in range(60):
        clip = make_clip(seed)
        pos, spec = clip.positions, clip.spec
        assert np.all(pos >= spec.radius - 1e-6) and np.all(pos <= 63 - spec.radius + 1e-6)
        along = (np.diff(pos, axis=0) @ np.array(DIRECTIONS[spec.direction])).round(6)
        if spec.bounces:
            # Moves the captioned way first, then back at the same speed.
            assert along[0] == pytest.approx(spec.speed) and along[-1] == pytest.approx(-spec.speed)
        else:
            assert np.allclose(along, spec.speed)
        seen[spec.bounces] += 1
    assert seen[True] > 5 and seen[False] > 5


def test_object_mask_covers_the_drawn_object() -> None:
    for seed in range(12):
        clip = make_clip(seed)
        spec, mask = clip.spec, clip.mask
        assert mask.shape == (1, 17, 64, 64)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        for t in (0, 8, 16):
            ys, xs = torch.nonzero(mask[0, t], as_tuple=True)
            centre = np.array([xs.float().mean(), ys.float().mean()])
            # Centroid near the drawn centre (a triangle's sits a little low); area is the shape's plus its anti-aliased rim.
            assert np.linalg.norm(centre - clip.positions[t]) < spec.radius * 0.4
            assert 1.5 * spec.radius**2 < len(ys) < 5.5 * spec.radius**2


def test_clip_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="frames must be 4k\\+1"):
        make_clip(0, frames=16)
    with pytest.raises(ValueError, match="size must be a multiple of 16"):
        make_clip(0, size=40)


def test_tracking_recovers_the_true_path() -> None:
    clip = make_clip(3)
    frames = ((clip.pixels.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    result = track(frames, clip.spec.colour, clip.spec.background)
    assert np.abs(result.positions - clip.positions).max() < 0.6
    assert intact(result, float(result.areas[0])).all()
    assert clip.spec.colour in OBJECT_COLOURS


def test_linear_fit_rms_is_zero_on_a_line() -> None:
    line = np.stack([np.arange(10) * 1.5 + 3, np.full(10, 7.0)], axis=1)
    assert linear_fit_rms(line) == pytest.approx(0.0, abs=1e-9)


# ---- frame-aware flow matching -------------------------------------------------------------


def test_noisy_latents_interpolate_each_frame_with_its_own_sigma() -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 16, 5, 4, 4, generator=g), torch.randn(2, 16, 5, 4, 4, generator=g)
    sigmas = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0], [0.9, 0.1, 0.3, 0.0, 0.6]])
    x_t = noisy_latents(x0, noise, sigmas)
    for b in range(2):
        for f in range(5):
            s = float(sigmas[b, f])
            torch.testing.assert_close(x_t[b, :, f], (1 - s) * x0[b, :, f] + s * noise[b, :, f])
    torch.testing.assert_close(velocity_target(x0, noise), noise - x0)
    torch.testing.assert_close(timesteps(sigmas), sigmas * 1000)


def test_fafm_draws_independent_timesteps_per_frame_and_scalar_mode_shares_one() -> None:
    per_frame = sample_sigmas(256, 5, per_frame=True, generator=torch.Generator().manual_seed(1))
    scalar = sample_sigmas(256, 5, per_frame=False, generator=torch.Generator().manual_seed(1))
    assert per_frame.shape == scalar.shape == (256, 5)
    assert torch.all(scalar == scalar[:, :1])
    assert (per_frame.std(dim=1) > 0.05).float().mean() > 0.95
    # Independent frames: correlation between frames near zero, uniform marginals in [0, 1].
    corr = torch.corrcoef(per_frame.T)
    assert (corr - torch.eye(5)).abs().max() < 0.2
    assert per_frame.min() >= 0 and per_frame.max() <= 1
    assert per_frame.mean().item() == pytest.approx(0.5, abs=0.05)


def test_fafm_clean_and_sync_mixes() -> None:
    g = torch.Generator().manual_seed(2)
    s = sample_sigmas(2000, 5, per_frame=True, generator=g, clean_prob=0.3, sync_prob=0.2)
    clean = s == 0
    assert 0.15 < clean.float().mean() < 0.3
    assert not clean.all(dim=1).any()
    synced = (s == s[:, :1]).all(dim=1)
    assert 0.15 < synced.float().mean() < 0.25
    shifted = sample_sigmas(4000, 1, per_frame=False, generator=g, shift=3.0)
    assert shifted.mean() > 0.6  # shift > 1 moves training towards high noise


def test_fafm_prefix_mix_gives_clean_prefixes_of_every_length() -> None:
    g = torch.Generator().manual_seed(3)
    s = sample_sigmas(4000, 5, per_frame=True, generator=g, prefix_prob=1.0)
    clean = s == 0
    length = clean.int().cumprod(dim=1).sum(dim=1)  # leading clean frames
    assert torch.equal(clean.sum(dim=1), length)  # clean frames form a prefix, nothing after it
    assert set(length.tolist()) == {1, 2, 3, 4}  # one to F-1 frames; the last frame is always generated
    assert (s[:, -1] > 0).all()
    half = sample_sigmas(4000, 5, per_frame=True, generator=g, prefix_prob=0.5, sync_prob=0.2)
    prefixed = (half[:, 0] == 0).float().mean()
    assert 0.33 < prefixed < 0.47  # half of the 80% that are not synced


def test_flow_loss_ignores_clean_frames() -> None:
    target = torch.zeros(1, 2, 3, 2, 2)
    prediction = target.clone()
    prediction[:, :, 0] = 5.0  # wrong only on the clean frame
    sigmas = torch.tensor([[0.0, 0.4, 0.8]])
    assert flow_loss(prediction, target, sigmas).item() == 0.0
    prediction[:, :, 1] = 1.0
    assert flow_loss(prediction, target, sigmas).item() == pytest.approx(0.5)


def test_flow_loss_weights_positions_without_changing_the_scale() -> None:
    target = torch.zeros(1, 1, 2, 1, 2)
    prediction = torch.tensor([[[[[1.0, 3.0]], [[0.0, 0.0]]]]])  # errors 1 and 9 on frame 0
    sigmas = torch.tensor([[0.5, 0.5]])
    assert flow_loss(prediction, target, sigmas).item() == pytest.approx(10 / 4)
    weights = torch.tensor([[[[[1.0, 3.0]], [[1.0, 1.0]]]]])  # the second position counts three times
    assert flow_loss(prediction, target, sigmas, weights).item() == pytest.approx((1 + 27) / 6)
    assert flow_loss(prediction, target, sigmas, torch.full_like(weights, 5.0)).item() == pytest.approx(10 / 4)


def test_latent_mask_follows_wans_causal_chunks() -> None:
    mask = torch.zeros(1, 17, 64, 64)
    mask[0, 0, 0, 0] = 1  # frame 0 -> latent frame 0, cell (0, 0)
    mask[0, 4, 20, 40] = 1  # frame 4 -> latent frame 1 (frames 1-4), cell (2, 5)
    mask[0, 5, 63, 63] = 1  # frame 5 -> latent frame 2 (frames 5-8), cell (7, 7)
    got = latent_mask(mask)
    assert got.shape == (1, 5, 8, 8)
    assert torch.nonzero(got).tolist() == [[0, 0, 0, 0], [0, 1, 2, 5], [0, 2, 7, 7]]


def test_latent_cache_keeps_its_weights_and_checks_their_shape(tmp_path) -> None:
    latents, context, negative = torch.randn(3, 16, 5, 8, 8), torch.randn(3, 4, 8), torch.randn(1, 4, 8)
    weights = torch.rand(3, 1, 5, 8, 8)
    LatentCache(latents, context, negative, weights).save(tmp_path / "c.safetensors")
    loaded = LatentCache.load(tmp_path / "c.safetensors")
    assert torch.equal(loaded.weights, weights) and torch.equal(loaded.latents, latents)
    assert LatentCache(latents, context, negative).weights is None
    with pytest.raises(ValueError, match=r"weights must be \[3, 1, 5, 8, 8\]"):
        LatentCache(latents, context, negative, torch.rand(3, 16, 5, 8, 8))


@torch.no_grad()
def test_lone_frame_latents_encode_every_fourth_frame_alone() -> None:
    vae = tiny_vae(0, **{**SMALL_VAE, "base_dim": 8}).eval()
    x = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    lone = lone_frame_latents(vae, x)
    assert lone.shape == (2, vae.config.z_dim, 2, 2, 2)
    for k, frame in ((0, 4), (1, 8)):
        alone = vae.encode(x[:, :, frame : frame + 1]).latent_dist.mode()[:, :, 0]
        torch.testing.assert_close(lone[:, :, k], alone, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_vae_loss_adds_the_lone_gap_and_decodes_swapped_chunks() -> None:
    vae = tiny_vae(0, **{**SMALL_VAE, "base_dim": 8}).eval()
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    weight = torch.ones_like(x[:, :1])

    def loss(lone_weight: float, swap_prob: float) -> torch.Tensor:
        config = VaeConfig(out=Path("unused"), kl_weight=0.0, lone_weight=lone_weight, swap_prob=swap_prob)
        return vae_loss(vae, x, weight, config, np.random.default_rng(0))

    latents = vae.encode(x).latent_dist.mode()
    lone = lone_frame_latents(vae, x)
    gap = (latents[:, :, 1:] - lone).pow(2).mean() / latents.pow(2).mean()
    torch.testing.assert_close(loss(2.0, 0.0) - loss(0.0, 0.0), 2 * gap, rtol=1e-4, atol=1e-6)
    # One chunk: a swap always replaces latent frame 1 with frame 4 encoded alone.
    error = vae.decode(torch.cat([latents[:, :, :1], lone], dim=2)).sample - x
    torch.testing.assert_close(loss(0.0, 1.0), (error.abs() + error.pow(2)).mean(), rtol=1e-4, atol=1e-6)
    assert not torch.isclose(loss(0.0, 1.0), loss(0.0, 0.0))


@torch.no_grad()
def test_vae_loss_weighs_the_first_frame() -> None:
    vae = tiny_vae(0, **{**SMALL_VAE, "base_dim": 8}).eval()
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    weight = 1 + torch.rand_like(x[:, :1])

    def loss(first_frame_weight: float) -> torch.Tensor:
        config = VaeConfig(out=Path("unused"), kl_weight=0.0, first_frame_weight=first_frame_weight)
        return vae_loss(vae, x, weight, config, np.random.default_rng(0))

    error = vae.decode(vae.encode(x).latent_dist.mode()).sample - x
    per_position = weight * (error.abs() + error.pow(2))
    first = per_position[:, :, 0].sum() / per_position.numel()
    torch.testing.assert_close(loss(4.0) - loss(1.0), 3 * first, rtol=1e-4, atol=1e-6)


def test_decoder_only_training_keeps_the_encoder() -> None:
    vae = tiny_vae(0, **{**SMALL_VAE, "base_dim": 8})
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    config = VaeConfig(out=Path("unused"), steps=2, batch=1, frames=5, crop=32, clip_frames=5, clip_size=32,
                       decoder_only=True, swap_prob=1.0, first_frame_weight=4.0, log_every=1)
    tuned, losses = train.train_vae(config, Accelerator(), vae)
    after = tuned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert len(losses) == 2 and changed
    assert all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert any(k.startswith("decoder.") for k in changed)
    with pytest.raises(ValueError, match="decoder_only fine-tunes the decoder of a trained VAE"):
        train.train_vae(config, Accelerator())


# ---- LoRA layout ---------------------------------------------------------------------------


def test_peft_names_map_to_the_pusa_layout() -> None:
    state = {"blocks.3.attn1.to_out.0.lora_A.weight": torch.ones(2, 4), "blocks.3.ffn.net.0.proj.lora_B.weight": torch.ones(8, 2)}
    out = to_pusa_layout(state)
    assert set(out) == {"blocks.3.self_attn.o.lora_A.default.weight", "blocks.3.ffn.0.lora_B.default.weight"}
    with pytest.raises(ValueError, match="unexpected LoRA key"):
        to_pusa_layout({"blocks.0.norm2.lora_A.weight": torch.ones(1, 1)})


# ---- make_tiny and evaluate, end to end at toy size -----------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("pusa-tiny")
    make_tiny.main(["--out", str(out), "--fast", "--threads", "1"])
    return out


def test_make_tiny_writes_the_model_folder(tiny_dir) -> None:
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "pusa_lora.safetensors", "defaults.json"):
        assert (tiny_dir / name).exists(), name
    defaults = json.loads((tiny_dir / "defaults.json").read_text())
    assert {"width", "height", "num_frames", "fps", "steps", "cfg", "lora_alpha", "noise_multiplier",
            "max_sequence_length", "example_prompts"} <= set(defaults)
    record = json.loads((tiny_dir / "training_record.json").read_text())
    assert list(record["stage_seconds"]) == ["vae", "vae_keyframe", "vae_decoder", "encode", "base", "lora"]
    assert all(record["final_loss"][k] is not None for k in ("vae", "vae_keyframe", "vae_decoder", "base", "lora"))
    assert record["reused_stages"] == []


def test_shipped_small_model_matches_the_full_recipe_and_the_limits() -> None:
    """weights/pusa-tiny is what `make_tiny` (FULL) writes: same recipe, under 90 min of training, at most 30 MB."""
    from pusa_core.weights import SHIPPED_TINY_DIR

    record = json.loads((SHIPPED_TINY_DIR / "training_record.json").read_text())
    full = {k: v for k, v in make_tiny.FULL.__dict__.items() if k != "defaults"}
    assert record["recipe"] == json.loads(json.dumps(full))
    assert list(record["stage_seconds"]) == ["vae", "vae_keyframe", "vae_decoder", "encode", "base", "lora"]
    assert record["total_seconds"] == pytest.approx(sum(record["stage_seconds"].values()), abs=0.5)
    assert record["total_seconds"] < 90 * 60
    assert json.loads((SHIPPED_TINY_DIR / "defaults.json").read_text()) == \
        json.loads(json.dumps({**make_tiny.FULL.defaults, "max_sequence_length": make_tiny.FULL.max_sequence_length}))
    assert sum(f.stat().st_size for f in SHIPPED_TINY_DIR.rglob("*") if f.is_file()) <= 30_000_000


def _vae_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")


def _without_stage(tiny_dir: Path, folder: Path, stage: str) -> Path:
    """A copy of ``tiny_dir``'s VAE whose record says the build stopped before ``stage``."""
    shutil.copytree(tiny_dir / "vae", folder / "vae")
    earlier = json.loads((tiny_dir / "training_record.json").read_text())
    names = list(earlier["stage_seconds"])
    for name in names[names.index(stage) : names.index("encode")]:
        del earlier["stage_seconds"][name]
    (folder / "training_record.json").write_text(json.dumps(earlier))
    return folder


def _latents_std(folder: Path) -> list[float]:
    return json.loads((folder / "vae" / "config.json").read_text())["latents_std"]


def test_make_tiny_can_reuse_an_earlier_vae(tiny_dir, tmp_path) -> None:
    out = tmp_path / "again"
    make_tiny.main(["--out", str(out), "--fast", "--threads", "1", "--vae-from", str(tiny_dir)])
    first, second = _vae_weights(tiny_dir), _vae_weights(out)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert _latents_std(out) == _latents_std(tiny_dir)
    earlier = json.loads((tiny_dir / "training_record.json").read_text())
    record = json.loads((out / "training_record.json").read_text())
    assert record["vae_from"] == str(tiny_dir)
    assert record["reused_stages"] == ["vae", "vae_keyframe", "vae_decoder"]
    # Reused stages carry the earlier build's seconds and losses: the total is the whole recipe's.
    for name in record["reused_stages"]:
        assert record["stage_seconds"][name] == earlier["stage_seconds"][name]
        assert record["final_loss"][name] == earlier["final_loss"][name]
    assert record["total_seconds"] == pytest.approx(sum(record["stage_seconds"].values()), abs=0.5)

    # An earlier VAE without the keyframe phase gets it, the decoder phase after it, and new statistics.
    tuned = tmp_path / "tuned"
    make_tiny.main(["--out", str(tuned), "--fast", "--threads", "1",
                    "--vae-from", str(_without_stage(tiny_dir, tmp_path / "plain", "vae_keyframe"))])
    assert json.loads((tuned / "training_record.json").read_text())["reused_stages"] == ["vae"]
    third = _vae_weights(tuned)
    assert not all(torch.equal(first[k], third[k]) for k in first if k.startswith("encoder."))
    assert _latents_std(tuned) != _latents_std(tiny_dir)

    # Without the decoder phase only the decoder changes: the latent space (and its statistics) is kept.
    decoded = tmp_path / "decoded"
    make_tiny.main(["--out", str(decoded), "--fast", "--threads", "1",
                    "--vae-from", str(_without_stage(tiny_dir, tmp_path / "nodecoder", "vae_decoder"))])
    assert json.loads((decoded / "training_record.json").read_text())["reused_stages"] == ["vae", "vae_keyframe"]
    fourth = _vae_weights(decoded)
    changed = {k for k in first if not torch.equal(first[k], fourth[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert _latents_std(decoded) == pytest.approx(_latents_std(tiny_dir), rel=1e-5)

    with pytest.raises(FileNotFoundError, match="--vae-from .* must be a make_tiny output folder"):
        make_tiny.main(["--out", str(tmp_path / "x"), "--fast", "--vae-from", str(tmp_path / "missing")])


def test_train_cli_runs_every_stage_at_toy_size(tiny_dir, tmp_path) -> None:
    from safetensors.torch import load_file

    cache, base, lora = tmp_path / "cache.safetensors", tmp_path / "base", tmp_path / "lora"
    train.main(["vae", "--out", str(tmp_path / "v"), "--steps", "2", "--batch", "1", "--base-dim", "8", "--stats-clips", "1"])
    assert json.loads((tmp_path / "v" / "vae" / "config.json").read_text())["latents_std"] != [1.0] * 16
    # Fine-tuning the model folder's VAE with the keyframe terms.
    train.main(["vae", "--init", str(tiny_dir), "--out", str(tmp_path / "k"), "--steps", "2", "--batch", "1",
                "--stats-clips", "1", "--lone-weight", "0.5", "--swap-prob", "1"])
    before, after = (load_file(d / "vae" / "diffusion_pytorch_model.safetensors") for d in (tiny_dir, tmp_path / "k"))
    assert before.keys() == after.keys() and not all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "k" / "vae_record.json").read_text())["args"]["swap_prob"] == 1
    # Only the decoder, on whole frames: the encoder is the model folder's.
    train.main(["vae", "--init", str(tiny_dir), "--out", str(tmp_path / "d"), "--steps", "1", "--batch", "1",
                "--stats-clips", "1", "--decoder-only", "--crop", "32", "--first-frame-weight", "4"])
    decoded = load_file(tmp_path / "d" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], decoded[k]) for k in before if k.startswith("encoder."))
    assert not all(torch.equal(before[k], decoded[k]) for k in before if k.startswith("decoder."))
    with pytest.raises(SystemExit, match="--decoder-only needs --init"):
        train.main(["vae", "--out", str(tmp_path / "n"), "--steps", "1", "--decoder-only"])
    with pytest.raises(SystemExit, match="--init .*: no VAE there"):
        train.main(["vae", "--init", str(tmp_path / "nothing"), "--out", str(tmp_path / "n"), "--steps", "1"])
    train.main(["encode", "--model-dir", str(tiny_dir), "--clips", "3", "--out", str(cache)])
    assert LatentCache.load(cache).weights.shape == (3, 1, 5, 8, 8)
    (tmp_path / "config.json").write_text(json.dumps(TINY_TRANSFORMER))
    train.main(["base", "--cache", str(cache), "--config", str(tmp_path / "config.json"), "--steps", "2", "--batch", "2",
                "--warmup", "1", "--object-weight", "4", "--out", str(base)])
    train.main(["lora", "--cache", str(cache), "--transformer", str(base / "transformer"), "--rank", "4", "--steps", "2",
                "--batch", "2", "--warmup", "1", "--object-weight", "4", "--out", str(lora)])
    assert json.loads((lora / "lora_record.json").read_text())["args"]["object_weight"] == 4
    assert any("lora_A" in key for key in load_file(lora / "pusa_lora.safetensors"))


def _lora_run(tmp_path: Path) -> tuple[Path, Path]:
    """A toy latent cache and a saved tiny base transformer for the ``lora`` stage."""
    g = torch.Generator().manual_seed(0)
    cache = tmp_path / "cache.safetensors"
    LatentCache(torch.randn(4, 16, 3, 4, 4, generator=g), torch.randn(4, 4, 32, generator=g),
                torch.randn(1, 4, 32, generator=g)).save(cache)
    tiny_transformer(0).save_pretrained(tmp_path / "base")
    return cache, tmp_path / "base"


def test_lora_cli_trains_with_the_fafm_mixes_it_parses(tmp_path) -> None:
    """The CLI's LoRA equals the one trained from a config with these mixes, and differs from one without a prefix mix."""
    from safetensors.torch import load_file

    cache, base = _lora_run(tmp_path)
    mixes = dict(clean_prob=0.3, sync_prob=0.2, prefix_prob=0.9)
    train.main(["lora", "--cache", str(cache), "--transformer", str(base), "--rank", "2", "--steps", "2", "--batch", "2",
                "--warmup", "1", "--clean-prob", "0.3", "--sync-prob", "0.2", "--prefix-prob", "0.9",
                "--out", str(tmp_path / "cli")])
    cli = load_file(tmp_path / "cli" / train.LORA_FILE)

    def trained(**fafm: float) -> dict[str, torch.Tensor]:
        config = TransformerConfig(out=tmp_path / "api", steps=2, batch=2, warmup=1, per_frame=True, rank=2, **fafm)
        transformer, _ = train_transformer(config, LatentCache.load(cache), PusaTransformer3DModel.from_pretrained(base),
                                           Accelerator())
        return pusa_lora_state_dict(transformer)

    expected, without_prefix = trained(**mixes), trained(**{**mixes, "prefix_prob": 0.0})
    assert cli.keys() == expected.keys()
    assert all(torch.equal(cli[k], expected[k]) for k in cli)
    assert not all(torch.equal(cli[k], without_prefix[k]) for k in cli)
    record = json.loads((tmp_path / "cli" / "lora_record.json").read_text())
    assert {k: record["config"][k] for k in mixes} == mixes and record["config"]["per_frame"] is True


def test_every_train_flag_is_a_config_field_or_a_stage_input() -> None:
    """Flags reach the config by name: each one a stage parses is a field of its config or listed here as an input."""
    required = {"vae": [], "encode": ["--model-dir", "m"], "base": ["--cache", "c", "--config", "j"],
                "lora": ["--cache", "c", "--transformer", "t"]}
    config_type = {"vae": VaeConfig, "encode": None, "base": TransformerConfig, "lora": TransformerConfig}
    inputs = {"vae": {"base_dim", "init", "stats_clips", "mixed_precision"},
              "encode": {"model_dir", "clips", "max_sequence_length", "out"},
              "base": {"cache", "config", "mixed_precision"}, "lora": {"cache", "transformer", "mixed_precision"}}
    parsed = {stage: set(vars(train._parser().parse_args([stage, *argv, "--out", "o"]))) - {"stage"}
              for stage, argv in required.items()}
    for stage, flags in parsed.items():
        fields = {f.name for f in dataclasses.fields(config_type[stage])} if config_type[stage] else set()
        assert flags - fields == inputs[stage], stage
    assert {"rank", "clean_prob", "sync_prob", "prefix_prob"} <= parsed["lora"]


def test_object_weight_needs_a_cache_with_weights(tmp_path) -> None:
    cache = LatentCache(torch.randn(2, 16, 2, 4, 4), torch.randn(2, 4, 32), torch.randn(1, 4, 32))
    config = TransformerConfig(out=tmp_path, steps=1, batch=2, object_weight=4.0)
    with pytest.raises(ValueError, match="object_weight needs a latent cache with object weights"):
        train_transformer(config, cache, tiny_transformer(0), Accelerator())


def test_saved_lora_is_pusa_layout_and_loads_on_every_module(tiny_dir) -> None:
    from safetensors.torch import load_file

    state = load_file(tiny_dir / "pusa_lora.safetensors")
    pattern = re.compile(r"^blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])\.lora_[AB]\.default\.weight$")
    assert all(pattern.match(k) for k in state), sorted(state)[:3]
    transformer = PusaTransformer3DModel.from_pretrained(tiny_dir / "transformer").eval()
    layers = transformer.config.num_layers
    loaded = load_lora(transformer, tiny_dir / "pusa_lora.safetensors", alpha=1.0)
    assert loaded == {f"blocks.{b}.{name}" for b in range(layers) for name in DIFFUSERS_TO_WAN}
    # The trained delta is real: alpha 0 (the base) and alpha 1 give different velocities.
    x = torch.randn(1, 16, 2, 4, 4)
    context = torch.randn(1, 16, transformer.config.text_dim)
    t = torch.tensor([[0.0, 900.0]])
    with torch.no_grad():
        with_lora = transformer(x, t, context).sample
        set_lora_alpha(transformer, 0.0)
        base = transformer(x, t, context).sample
    assert (with_lora - base).abs().max() > 0


def test_evaluate_runs_and_prints_metrics(tiny_dir, tmp_path, capsys) -> None:
    strips = tmp_path / "strips"
    metrics_file = tmp_path / "metrics.json"
    evaluate.main(["--model-dir", str(tiny_dir), "--clips", "1", "--steps", "1", "--strips", str(strips),
                   "--json", str(metrics_file), "--markdown", str(tmp_path / "tables.md")])
    printed = capsys.readouterr().out
    for task in ("vae_recon", "i2v_lora", "i2v_base", "start_end_lora", "start_end_base", "extension_lora",
                 "extension_base", "t2v_lora", "t2v_base"):
        assert re.search(rf"^\s*{task}: .*clips 1", printed, re.M), task
    metrics = json.loads(metrics_file.read_text())
    assert 0 < metrics["i2v_lora"]["first_psnr"] < 100
    assert 0 < metrics["vae_recon"]["keyframe_psnr"] < 100
    assert metrics["i2v_lora"]["latent_mse"] >= 0
    assert metrics["settings"]["steps"] == 1
    assert len(metrics["checks"]) == 10 and re.search(r"^(PASS|FAIL)  I2V: first frame", printed, re.M)
    assert len(re.findall(r"^\| .* \| (pass|FAIL) \|$", (tmp_path / "tables.md").read_text(), re.M)) == 10
    for name in ("i2v.png", "start_end.png", "extension.png", "t2v.png"):
        with Image.open(strips / name) as image:
            assert image.width > image.height > 0


def test_checks_pass_good_numbers_and_fail_missing_or_bad_ones() -> None:
    good = {
        "i2v_lora": {"first_psnr": 30.0, "found_all": 1.0, "intact": 0.9, "right_way": 1.0, "path_rms": 1.0, "latent_mse": 0.1},
        "i2v_base": {"latent_mse": 0.5},
        "start_end_lora": {"start_err": 1.0, "end_err": 2.0},
        "extension_lora": {"speed_err": 0.2},
        "t2v_lora": {"found_all": 0.7},
        "t2v_base": {"found_all": 0.8},
        "settings": {"steps": 10},
    }
    assert all(c.passed for c in evaluate.checks(good))
    bad = json.loads(json.dumps(good))
    bad["i2v_lora"]["latent_mse"] = 0.45  # LoRA barely better than the base: not "far better"
    del bad["start_end_lora"]["end_err"]  # the object was never found at the end
    bad["t2v_lora"]["found_all"] = 0.5  # the LoRA lost the base's T2V
    failed = {c.claim for c in evaluate.checks(bad) if not c.passed}
    assert failed == {"LoRA vs base: I2V latent MSE ratio", "start/end: ends at the given end (px)",
                      "LoRA keeps base T2V (found-all difference)"}
    text = evaluate.format_checks(evaluate.checks(bad))
    assert "FAIL  start/end: ends at the given end (px): n/a (needs <= 4)" in text
    tables = evaluate.markdown_tables(bad, evaluate.checks(bad))
    assert "| start/end: distance to the true start / end (px) | n/a / n/a | 1 / n/a |" in tables
    assert "| I2V: latent MSE of the frames after the image | 0.5 | 0.45 |" in tables
    assert "| LoRA vs base: I2V latent MSE ratio | 0.9 | ≤ 0.8 | FAIL |" in tables


def test_readme_tables_are_the_shipped_metrics() -> None:
    """README's small-model tables are what `evaluate --markdown` makes of docs/tiny/metrics.json."""
    root = Path(__file__).resolve().parents[1]
    metrics = json.loads((root / "docs" / "tiny" / "metrics.json").read_text())
    tables = evaluate.markdown_tables(metrics, evaluate.checks(metrics))
    readme = (root / "README.md").read_text()
    assert [line for line in tables.splitlines() if line and line not in readme] == []
    assert (root / "docs" / "tiny" / "tables.md").read_text() == tables


def test_evaluate_names_a_missing_model_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="--model-dir .* lacks"):
        evaluate.load_model(tmp_path)
