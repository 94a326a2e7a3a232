"""Build ``weights/pusa-tiny`` from nothing: the whole Pusa recipe in small, on a CPU.

    python -m pusa_core.training.make_tiny --out weights/pusa-tiny          # the shipped model
    python -m pusa_core.training.make_tiny --out /tmp/pusa-tiny --fast      # a seconds-long smoke run

Stages: a small AutoencoderKLWan on procedural clips, then a keyframe phase that fine-tunes it so a
frame encoded alone decodes at a later latent position, then a decoder phase on whole frames; a frozen random UMT5 with a word tokenizer over
the caption vocabulary; a base Wan transformer trained with scalar timesteps (plain flow matching,
the stand-in for Wan2.1-T2V); and the Pusa LoRA on it, trained with frame-aware flow matching.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKLWan

from ..tiny_models import SMALL_VAE, TINY_TRANSFORMER, build_word_tokenizer, tiny_text_encoder, tiny_transformer
from .data import EXAMPLE_PROMPTS, FRAMES, SIZE, vocabulary
from .train import (
    TransformerConfig,
    VaeConfig,
    encode_clips,
    save_transformer_outputs,
    set_latent_stats,
    train_transformer,
    train_vae,
    write_json,
)

# Held-out clips (evaluation) use seeds from here on; training never reaches them.
HELD_OUT_SEED = 10_000_000


@dataclass(frozen=True)
class Recipe:
    vae_steps: int
    vae_overrides: dict[str, Any]
    text_overrides: dict[str, Any]
    transformer_overrides: dict[str, Any]
    clips: int
    stats_clips: int
    base: dict[str, Any]
    lora: dict[str, Any]
    vae_batch: int = 8
    vae_frames: int = FRAMES
    vae_crop: int = 32
    vae_lr: float = 3e-3
    # The keyframe phase: fine-tunes the trained VAE with the lone-frame terms (see VaeConfig) so that
    # an end frame or keyframe, encoded alone, decodes right at a later latent position. 0: no phase.
    vae_keyframe_steps: int = 0
    vae_keyframe_lr: float = 1e-3
    vae_lone_weight: float = 0.0
    vae_swap_prob: float = 0.0
    # The decoder phase: fine-tunes the decoder alone on whole frames (the phases before see crops,
    # which leaves frame 0 and the mid-block attention off at full size); the latent space is kept.
    vae_decoder_steps: int = 0
    vae_decoder_lr: float = 5e-4
    vae_decoder_batch: int = 8
    vae_first_frame_weight: float = 1.0
    size: int = SIZE
    frames: int = FRAMES
    max_sequence_length: int = 16
    defaults: dict[str, Any] = field(default_factory=dict)


# The sampler settings the app should use for this model (chosen with evaluate.py on held-out clips).
APP_DEFAULTS: dict[str, Any] = {
    "width": SIZE,
    "height": SIZE,
    "num_frames": FRAMES,
    "fps": 8,
    "steps": 10,
    "cfg": 3.0,
    "lora_alpha": 1.0,
    "noise_multiplier": 0.0,
    "example_prompts": list(EXAMPLE_PROMPTS),
}

FULL = Recipe(
    vae_steps=2800,
    vae_overrides=SMALL_VAE,
    vae_keyframe_steps=300,
    vae_lone_weight=0.1,
    vae_swap_prob=0.5,
    vae_decoder_steps=400,
    vae_first_frame_weight=4.0,
    text_overrides={"dim": 64, "dim_attn": 64, "dim_ffn": 128, "num_heads": 4, "num_layers": 2},
    transformer_overrides={"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 512, "num_layers": 4,
                           "text_dim": 64, "freq_dim": 64},
    clips=8000,
    stats_clips=64,
    base={"steps": 11000, "batch": 16, "lr": 8e-4, "warmup": 100, "shift": 2.0, "object_weight": 4.0},
    lora={"steps": 10000, "batch": 16, "lr": 1e-3, "warmup": 100, "shift": 2.0, "rank": 32, "object_weight": 4.0,
          "clean_prob": 0.2, "sync_prob": 0.1, "prefix_prob": 0.4},
    defaults=APP_DEFAULTS,
)
# Same code path at toy size: for the tests, seconds on a CPU.
FAST = Recipe(
    vae_steps=2,
    vae_overrides={**SMALL_VAE, "base_dim": 8},
    text_overrides={"dim": 32, "dim_attn": 32, "dim_ffn": 64, "num_heads": 4, "num_layers": 1},
    transformer_overrides={"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "num_layers": 1,
                           "text_dim": 32, "freq_dim": 32},
    clips=8,
    stats_clips=4,
    vae_batch=2,
    vae_frames=5,
    vae_keyframe_steps=2,
    vae_lone_weight=0.5,
    vae_swap_prob=0.5,
    vae_decoder_steps=2,
    vae_decoder_batch=2,
    vae_first_frame_weight=4.0,
    size=32,
    frames=5,
    base={"steps": 3, "batch": 4, "lr": 1e-3, "warmup": 1, "log_every": 1},
    lora={"steps": 3, "batch": 4, "lr": 1e-3, "warmup": 1, "rank": 4, "clean_prob": 0.2, "sync_prob": 0.1,
          "prefix_prob": 0.25, "log_every": 1},
    defaults={**APP_DEFAULTS, "width": 32, "height": 32, "num_frames": 5, "steps": 2},
)


def build(out: Path, recipe: Recipe, work: Path, seed: int = 0, vae_from: Path | None = None) -> dict[str, Any]:
    """Train every stage of ``recipe`` and write the model folder ``out``; return the training record.

    ``vae_from`` (a folder holding ``vae/`` from an earlier build) reuses the VAE phases that build
    ran (the first is the longest stage), so the transformer stages can be retrained alone; the phases
    it lacks run on its VAE.
    """
    accelerator = Accelerator()
    stages: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_word_tokenizer(vocabulary())
    text_encoder = tiny_text_encoder(len(tokenizer), seed=seed, **recipe.text_overrides)
    common = dict(out=work, clip_frames=recipe.frames, clip_size=recipe.size, vae_overrides=recipe.vae_overrides)
    cropped = dict(batch=recipe.vae_batch, frames=recipe.vae_frames, crop=recipe.vae_crop)
    phases = {
        "vae": VaeConfig(steps=recipe.vae_steps, lr=recipe.vae_lr, seed=seed, **cropped, **common),
        "vae_keyframe": VaeConfig(steps=recipe.vae_keyframe_steps, lr=recipe.vae_keyframe_lr,
                                  lone_weight=recipe.vae_lone_weight, swap_prob=recipe.vae_swap_prob, seed=seed + 1,
                                  **cropped, **common),
        # Whole frames: the VAE's mid-block attention sees the full frame only here.
        "vae_decoder": VaeConfig(steps=recipe.vae_decoder_steps, lr=recipe.vae_decoder_lr, batch=recipe.vae_decoder_batch,
                                 frames=recipe.frames, crop=recipe.size, swap_prob=recipe.vae_swap_prob, decoder_only=True,
                                 first_frame_weight=recipe.vae_first_frame_weight, seed=seed + 2, **common),
    }
    phases = {name: config for name, config in phases.items() if config.steps > 0}
    earlier = _earlier_record(vae_from) if vae_from is not None else None
    reused: list[str] = []
    if earlier is not None:
        # The leading phases the earlier build ran are reused; every phase from the first one it lacks runs.
        for name in phases:
            if name not in earlier["stage_seconds"]:
                break
            reused.append(name)
    vae = AutoencoderKLWan.from_pretrained(vae_from / "vae") if earlier is not None else None
    losses: dict[str, list[float]] = {}
    for name, config in phases.items():
        if name in reused:
            continue
        t0 = time.perf_counter()
        config.log_every = max(1, min(25, config.steps))
        vae, losses[name] = train_vae(config, accelerator, vae)
        stages[name] = time.perf_counter() - t0
    vae.eval()
    if len(reused) < len(phases):
        t0 = time.perf_counter()
        # Statistics come from clips outside both the training and the held-out seeds.
        stats_seeds = list(range(HELD_OUT_SEED // 2, HELD_OUT_SEED // 2 + recipe.stats_clips))
        set_latent_stats(vae, stats_seeds, frames=recipe.frames, size=recipe.size)
        stages[list(stages)[-1]] += time.perf_counter() - t0
    vae.save_pretrained(out / "vae", safe_serialization=True)

    t0 = time.perf_counter()
    cache = encode_clips(vae, tokenizer, text_encoder, list(range(recipe.clips)), recipe.max_sequence_length,
                         frames=recipe.frames, size=recipe.size)
    cache.save(work / "latents.safetensors")
    stages["encode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    base_config = TransformerConfig(out=work / "base", seed=seed, **recipe.base)
    transformer = tiny_transformer(seed, **recipe.transformer_overrides).train()
    base, base_losses = train_transformer(base_config, cache, transformer, accelerator)
    base.save_pretrained(out / "transformer", safe_serialization=True)
    stages["base"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    lora_config = TransformerConfig(out=out, seed=seed + 1, per_frame=True, **recipe.lora)
    fresh = type(base).from_pretrained(out / "transformer")
    lora_model, lora_losses = train_transformer(lora_config, cache, fresh, accelerator)
    save_transformer_outputs(lora_config, lora_model, accelerator)
    stages["lora"] = time.perf_counter() - t0

    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    write_json(out / "defaults.json", {**recipe.defaults, "max_sequence_length": recipe.max_sequence_length})
    seconds = {**{k: earlier["stage_seconds"][k] for k in reused}, **{k: round(v, 1) for k, v in stages.items()}}
    final_loss = {k: _tail(v) for k, v in losses.items()} | {"base": _tail(base_losses), "lora": _tail(lora_losses)}
    record = {
        # Reused stages carry the earlier build's seconds and losses, so the total is that of the whole recipe.
        "stage_seconds": {k: seconds[k] for k in [*phases, "encode", "base", "lora"]},
        "total_seconds": round(sum(seconds.values()), 1),
        "torch_threads": torch.get_num_threads(),
        "final_loss": {k: (earlier["final_loss"].get(k) if k in reused else final_loss[k]) for k in [*phases, "base", "lora"]},
        "vae_from": str(vae_from) if vae_from is not None else None,
        "reused_stages": reused,
        "clips": recipe.clips,
        "held_out_seed": HELD_OUT_SEED,
        "recipe": {k: v for k, v in recipe.__dict__.items() if k != "defaults"},
        "transformer_config": {**TINY_TRANSFORMER, **recipe.transformer_overrides},
    }
    write_json(out / "training_record.json", record)
    return record


def _earlier_record(folder: Path) -> dict[str, Any]:
    """The training record of an earlier make_tiny output ``folder``, which must also hold its ``vae/``."""
    record_file = folder / "training_record.json"
    if not (folder / "vae").is_dir() or not record_file.is_file():
        raise FileNotFoundError(f"--vae-from {folder} must be a make_tiny output folder (with vae/ and training_record.json)")
    return json.loads(record_file.read_text())


def _tail(losses: list[float], n: int = 50) -> float | None:
    window = losses[-n:]
    if not window:
        return None
    return round(sum(window) / len(window), 5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pusa_core.training.make_tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (e.g. weights/pusa-tiny)")
    parser.add_argument("--fast", action="store_true", help="toy sizes and a few steps: proves the pipeline runs")
    parser.add_argument("--work", type=Path, default=None, help="keep the latent cache here (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-from", type=Path, default=None,
                        help="reuse the VAE of an earlier make_tiny folder: skip the VAE stage (and the keyframe "
                             "phase if that folder had it)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    recipe = FAST if args.fast else FULL
    work = args.work or Path(tempfile.mkdtemp(prefix="pusa-tiny-"))
    try:
        record = build(args.out, recipe, work, args.seed, args.vae_from)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v:.0f}s" for k, v in record["stage_seconds"].items())
          + f", total {record['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
