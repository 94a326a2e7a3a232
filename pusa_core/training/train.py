"""Training stages: ``vae``, ``encode``, ``base`` (scalar flow matching) and ``lora`` (Pusa's FAFM).

Every stage runs under ``accelerate launch`` (one process, many GPUs, or DeepSpeed ZeRO-2 with
``configs/accelerate_zero2.yaml``) or as a plain ``python -m``. The ``lora`` stage is the Pusa
recipe for any Wan2.1-T2V transformer in diffusers format, the 14B included:

    accelerate launch --config_file pusa_core/training/configs/accelerate_zero2.yaml \\
        -m pusa_core.training.train lora --transformer weights/Wan2.1-T2V-14B-Diffusers/transformer \\
        --cache my_latents.safetensors --rank 512 --lr 1e-5 --batch 1 --grad-accum 4 \\
        --mixed-precision bf16 --gradient-checkpointing --steps 1200 --out runs/pusa
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKLWan
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset
from transformers import PreTrainedTokenizerBase

from ..latents import encode_pixels
from ..text import encode_prompts
from ..tiny_models import SMALL_VAE, tiny_vae
from ..transformer import PusaTransformer3DModel
from .cache import LatentCache
from .data import FRAMES, SIZE, clip_batch, make_clip
from .fafm import flow_loss, noisy_latents, sample_sigmas, timesteps, velocity_target
from .lora_layout import TRAINING_ADAPTER, lora_config, pusa_lora_state_dict

LORA_FILE = "pusa_lora.safetensors"


@dataclass
class VaeConfig:
    out: Path
    steps: int = 1000
    batch: int = 8
    lr: float = 1e-3
    frames: int = 17  # every temporal chunk the VAE will see: the first frame and four 4-frame chunks
    crop: int = 32  # the VAE is convolutional: crops (around the object) train it at a quarter of the cost
    kl_weight: float = 1e-4
    # The object covers ~5% of a frame: unweighted, the loss is met by painting the background and
    # the object is washed out. Object pixels (and their anti-aliased edge) weigh 1 + this.
    object_weight: float = 5.0
    # Keyframes are encoded alone (as Pusa does) but sit at later latent positions, where a chunk
    # latent is expected. These two terms make a lone frame's latent stand in for its chunk's:
    # ``lone_weight`` pulls chunk k's latent towards that of its last frame (4k) encoded alone, and
    # ``swap_prob`` is the share of clips decoded with one chunk latent swapped for the lone one.
    # From a random init they swamp the reconstruction (the loss stalls): use them to fine-tune a
    # VAE that already reconstructs (``train_vae(..., vae=trained)``).
    lone_weight: float = 0.0
    swap_prob: float = 0.0
    # Train only post_quant_conv and the decoder: the encoder, so the latent space and any transformer
    # trained on it, stays as it is.
    decoder_only: bool = False
    # Frame 0 is decoded from its own latent (the causal first chunk) and is the I2V input image, but
    # it is one frame in 17 of the loss: weigh it this many times a later frame.
    first_frame_weight: float = 1.0
    clip_grad: float = 5.0
    clip_frames: int = FRAMES
    clip_size: int = SIZE
    train_seeds: int = 100_000  # clips are drawn from seeds [0, train_seeds)
    seed: int = 0
    vae_overrides: dict[str, Any] = field(default_factory=dict)
    log_every: int = 50


@dataclass
class TransformerConfig:
    out: Path
    steps: int = 2000
    batch: int = 16
    grad_accum: int = 1
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01
    shift: float = 1.0  # sigma sampling warp during training (the sampler's own shift is separate)
    per_frame: bool = False  # False: plain flow matching (the base); True: FAFM (the Pusa LoRA)
    clean_prob: float = 0.0
    sync_prob: float = 0.0
    prefix_prob: float = 0.0
    caption_dropout: float = 0.1
    # Uses the cache's per-position weights when it has them: 1 + object_weight where the object is.
    # Unweighted, the background's share of the loss dominates and the object fades as frames go on.
    object_weight: float = 0.0
    rank: int = 0  # 0: train every weight (base); >0: train a LoRA of this rank on a frozen base
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0  # accelerate save_state every N optimizer steps (0: only at the end)
    resume: Path | None = None
    seed: int = 0
    log_every: int = 50


def _log(accelerator: Accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(message, flush=True)


def _window(clip: torch.Tensor, frames: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A random ``frames``-long, ``size``-square window of ``clip`` ``[C, T, H, W]`` that keeps the object in view.

    The last channel is the object mask; the window is centred on the object (with jitter), since a
    blind crop of a small object's clip is mostly background and teaches the VAE nothing about it.
    """
    t0 = int(rng.integers(0, clip.shape[1] - frames + 1))
    clip = clip[:, t0 : t0 + frames]
    height, width = clip.shape[2:]
    if size >= min(height, width):
        return clip
    ys, xs = torch.nonzero(clip[-1].amax(0), as_tuple=True)
    cy, cx = (float(ys.float().mean()), float(xs.float().mean())) if len(ys) else (height / 2, width / 2)
    jy, jx = (int(v) for v in rng.integers(-(size // 4), size // 4 + 1, size=2))
    y0 = min(max(round(cy) + jy - size // 2, 0), height - size)
    x0 = min(max(round(cx) + jx - size // 2, 0), width - size)
    return clip[:, :, y0 : y0 + size, x0 : x0 + size]


def lone_frame_latents(vae: AutoencoderKLWan, x: torch.Tensor) -> torch.Tensor:
    """Posterior means of frames 4, 8, ... of ``x`` ``[B, C, T, H, W]``, each encoded alone: ``[B, z, (T-1)//4, h, w]``.

    Frame 4k is the last frame of latent chunk k, the frame a keyframe at latent position k stands for.
    """
    frames = x[:, :, 4::4]
    b, c, k, h, w = frames.shape
    singles = frames.transpose(1, 2).reshape(b * k, c, 1, h, w)
    mean = vae.encode(singles).latent_dist.mode()
    return mean.reshape(b, k, *mean.shape[1:]).squeeze(3).transpose(1, 2)


def vae_loss(
    vae: AutoencoderKLWan,
    x: torch.Tensor,
    weight: torch.Tensor,
    config: VaeConfig,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Weighted L1 + L2 reconstruction, a light KL, and the lone-frame terms of ``config`` (when weighted)."""
    posterior = vae.encode(x).latent_dist
    # Decoding the posterior mean, not a sample: at init the posterior variance is ~1, which drowns
    # the signal and stalls a short CPU run; latents are normalized afterwards anyway.
    latents = posterior.mode()
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1 - posterior.logvar).mean()
    loss = config.kl_weight * kl.float()
    chunks = latents.shape[2] - 1
    if chunks and (config.lone_weight or config.swap_prob):
        lone = lone_frame_latents(vae, x)
        # Relative to the latents' own scale, so shrinking them all cannot satisfy it.
        gap = (latents[:, :, 1:] - lone).pow(2).mean() / latents.detach().pow(2).mean().clamp_min(1e-6)
        loss = loss + config.lone_weight * gap.float()
        swapped = torch.from_numpy(rng.random(len(x)) < config.swap_prob)
        if swapped.any():
            position = torch.from_numpy(rng.integers(1, chunks + 1, len(x)))
            rows = swapped.nonzero().squeeze(1)
            pick = torch.zeros_like(latents[:, :1, :, :1, :1], dtype=torch.bool)
            pick[rows, 0, position[rows], 0, 0] = True
            padded = torch.cat([latents[:, :, :1], lone], dim=2)
            latents = torch.where(pick.to(latents.device), padded, latents)
    error = vae.decode(latents).sample.float() - x
    if config.first_frame_weight != 1.0:
        per_frame = torch.ones(x.shape[2], device=x.device)
        per_frame[0] = config.first_frame_weight
        weight = weight * per_frame.view(1, 1, -1, 1, 1)
    # L2 pulls colours in fast from a gray start; L1 keeps edges sharp.
    return loss + (weight * (error.abs() + error.pow(2))).mean()


def train_vae(
    config: VaeConfig, accelerator: Accelerator, vae: AutoencoderKLWan | None = None
) -> tuple[AutoencoderKLWan, list[float]]:
    """Train a small ``AutoencoderKLWan`` on procedural clips (object-weighted L1 + L2, a light KL); return it and its losses.

    A fresh one from ``config.vae_overrides``, or ``vae`` fine-tuned when given.
    """
    if accelerator.num_processes > 1:
        # The small demo VAE needs no more than one device; the 14B recipe uses Wan's own VAE.
        raise ValueError("the vae stage runs in one process: start it with plain python, not a multi-GPU launch")
    if config.decoder_only and vae is None:
        raise ValueError("decoder_only fine-tunes the decoder of a trained VAE: pass one (train.py vae --init FOLDER)")
    set_seed(config.seed)
    vae = (tiny_vae(config.seed, **config.vae_overrides) if vae is None else vae).train()
    if config.decoder_only:
        vae.requires_grad_(False)
        vae.post_quant_conv.requires_grad_(True)
        vae.decoder.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(50, config.steps // 10), num_training_steps=config.steps)
    vae, optimizer, scheduler = accelerator.prepare(vae, optimizer, scheduler)
    rng = np.random.default_rng(config.seed + accelerator.process_index)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        seeds = rng.integers(0, config.train_seeds, config.batch)
        frames, size = min(config.frames, config.clip_frames), min(config.crop, config.clip_size)
        # Pixels and mask are cut together, as one 4-channel clip.
        clips = [make_clip(int(s), config.clip_frames, config.clip_size) for s in seeds]
        both = torch.stack([_window(torch.cat([c.pixels, c.mask]), frames, size, rng) for c in clips]).to(accelerator.device)
        x, weight = both[:, :3], 1 + config.object_weight * both[:, 3:]
        with accelerator.autocast():
            loss = vae_loss(vae, x, weight, config, rng)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, config.clip_grad)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        if step % config.log_every == 0 or step == config.steps:
            recent = float(np.mean(losses[-config.log_every :]))
            _log(accelerator, f"vae step {step}/{config.steps} loss {recent:.4f} ({time.perf_counter() - start:.0f}s)")
    vae = accelerator.unwrap_model(vae).eval()
    return vae, losses


@torch.no_grad()
def set_latent_stats(
    vae: AutoencoderKLWan, seeds: Sequence[int], batch: int = 8, frames: int = FRAMES, size: int = SIZE
) -> None:
    """Store the per-channel mean and std of the VAE's latents in its config (Wan's latent normalization)."""
    vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[1.0] * vae.config.z_dim)
    raw = torch.cat([encode_pixels(vae, clip_batch(seeds[i : i + batch], frames, size)[0]) for i in range(0, len(seeds), batch)])
    per_channel = raw.transpose(0, 1).flatten(1)
    vae.register_to_config(latents_mean=per_channel.mean(1).tolist(), latents_std=per_channel.std(1).clamp_min(1e-3).tolist())


@torch.no_grad()
def encode_clips(
    vae: AutoencoderKLWan,
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: torch.nn.Module,
    seeds: Sequence[int],
    max_sequence_length: int,
    batch: int = 8,
    frames: int = FRAMES,
    size: int = SIZE,
) -> LatentCache:
    """Latents and caption embeddings of the procedural clips ``seeds``."""
    latents, captions, masks = [], [], []
    for i in range(0, len(seeds), batch):
        clips = [make_clip(s, frames, size) for s in seeds[i : i + batch]]
        latents.append(encode_pixels(vae, torch.stack([c.pixels for c in clips])).cpu())
        captions += [c.caption for c in clips]
        masks += [latent_mask(c.mask) for c in clips]
    unique = sorted(set(captions))
    embedded = encode_prompts(tokenizer, text_encoder, unique, max_sequence_length).cpu()
    row = {c: i for i, c in enumerate(unique)}
    context = embedded[[row[c] for c in captions]]
    negative = encode_prompts(tokenizer, text_encoder, [""], max_sequence_length).cpu()
    return LatentCache(torch.cat(latents), context, negative, torch.stack(masks))


def latent_mask(mask: torch.Tensor, spatial: int = 8, temporal: int = 4) -> torch.Tensor:
    """Pixel mask ``[1, T, H, W]`` -> ``[1, F, H/8, W/8]``: 1 where a latent position covers any object pixel.

    Latent frame 0 is pixel frame 0; latent frame k > 0 covers pixel frames 4k-3 .. 4k (Wan's causal chunks).
    """
    first = mask[:, :1]
    rest = mask[:, 1:].unflatten(1, (-1, temporal)).amax(2)
    per_frame = torch.cat([first, rest], dim=1)
    return torch.nn.functional.max_pool2d(per_frame, spatial)


def _infinite(loader: DataLoader):
    while True:
        yield from loader


def train_transformer(
    config: TransformerConfig, cache: LatentCache, transformer: PusaTransformer3DModel, accelerator: Accelerator
) -> tuple[PusaTransformer3DModel, list[float]]:
    """Flow-matching training of ``transformer`` on ``cache``: every weight (base) or a LoRA (``rank > 0``)."""
    set_seed(config.seed)
    if config.rank > 0:
        transformer.requires_grad_(False)
        transformer.add_adapter(lora_config(config.rank), adapter_name=TRAINING_ADAPTER)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    _log(accelerator, f"training {sum(p.numel() for p in params):,} parameters on {len(cache)} clips")

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=config.warmup * accelerator.num_processes,
        num_training_steps=config.steps * accelerator.num_processes,
    )
    if config.object_weight and cache.weights is None:
        raise ValueError("object_weight needs a latent cache with object weights: build it with the 'encode' stage, "
                         "or set object_weight to 0")
    weights = torch.ones_like(cache.latents[:, :1]) if cache.weights is None else 1 + config.object_weight * cache.weights
    loader = DataLoader(
        TensorDataset(cache.latents, cache.context, weights),
        batch_size=config.batch,
        shuffle=True,
        drop_last=len(cache) >= config.batch,
        generator=torch.Generator().manual_seed(config.seed),
    )
    transformer, optimizer, loader, scheduler = accelerator.prepare(transformer, optimizer, loader, scheduler)
    if config.resume is not None:
        accelerator.load_state(str(config.resume))

    negative = cache.negative.to(accelerator.device)
    generator = torch.Generator().manual_seed(config.seed + 1000 * accelerator.process_index)
    losses: list[float] = []
    start = time.perf_counter()
    step = 0
    batches = _infinite(loader)
    while step < config.steps:
        x0, context, weights = next(batches)
        with accelerator.accumulate(transformer):
            b, _, f = x0.shape[:3]
            sigmas = sample_sigmas(b, f, config.per_frame, generator, config.shift, config.clean_prob,
                                   config.sync_prob, config.prefix_prob)
            sigmas = sigmas.to(accelerator.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            drop = (torch.rand(b, generator=generator) < config.caption_dropout).to(accelerator.device)
            context = torch.where(drop[:, None, None], negative.to(context.dtype), context)
            with accelerator.autocast():
                prediction = transformer(noisy_latents(x0, noise, sigmas), timesteps(sigmas), context, return_dict=False)[0]
            loss = flow_loss(prediction, velocity_target(x0, noise), sigmas, weights)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        if not accelerator.sync_gradients:
            continue
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            recent = float(np.mean(losses[-config.log_every * config.grad_accum :]))
            _log(accelerator, f"{'lora' if config.rank else 'base'} step {step}/{config.steps} loss {recent:.4f} "
                 f"({time.perf_counter() - start:.0f}s)")
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            accelerator.save_state(str(Path(config.out) / "checkpoints" / f"step-{step}"))
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(transformer).eval(), losses


def save_transformer_outputs(config: TransformerConfig, transformer: PusaTransformer3DModel, accelerator: Accelerator) -> Path:
    """Base stage: ``out/transformer`` (diffusers format). LoRA stage: ``out/pusa_lora.safetensors`` (Pusa layout)."""
    out = Path(config.out)
    if not accelerator.is_main_process:
        return out
    out.mkdir(parents=True, exist_ok=True)
    if config.rank > 0:
        path = out / LORA_FILE
        save_file(pusa_lora_state_dict(transformer), str(path))
        return path
    transformer.save_pretrained(out / "transformer", safe_serialization=True)
    return out / "transformer"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _accelerator(args: argparse.Namespace) -> Accelerator:
    return Accelerator(gradient_accumulation_steps=getattr(args, "grad_accum", 1),
                       mixed_precision=getattr(args, "mixed_precision", "no"))


def _config_from_args(config_type: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """``config_type`` with every parsed flag named like one of its fields, plus ``fixed``.

    Flags reach the config by name, so a flag added to a stage cannot be parsed and then left out.
    """
    names = {f.name for f in dataclasses.fields(config_type)}
    return config_type(**{k: v for k, v in vars(args).items() if k in names}, **fixed)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pusa_core.training.train", description=__doc__.split("\n\n")[0])
    stages = parser.add_subparsers(dest="stage", required=True)

    vae = stages.add_parser("vae", help="train a small AutoencoderKLWan on procedural clips")
    vae.add_argument("--steps", type=int, default=VaeConfig.steps)
    vae.add_argument("--batch", type=int, default=VaeConfig.batch)
    vae.add_argument("--lr", type=float, default=VaeConfig.lr)
    vae.add_argument("--base-dim", type=int, default=SMALL_VAE["base_dim"])
    vae.add_argument("--object-weight", type=float, default=VaeConfig.object_weight,
                     help="extra loss weight on object pixels (1 + this)")
    vae.add_argument("--lone-weight", type=float, default=VaeConfig.lone_weight,
                     help="pull each chunk's latent towards its last frame encoded alone")
    vae.add_argument("--swap-prob", type=float, default=VaeConfig.swap_prob,
                     help="share of clips decoded with one chunk latent swapped for a lone-frame latent")
    vae.add_argument("--init", type=Path, default=None,
                     help="a trained VAE folder to fine-tune (e.g. with --lone-weight/--swap-prob) instead of a fresh one")
    vae.add_argument("--stats-clips", type=int, default=64, help="clips used for the latent mean/std")
    vae.add_argument("--crop", type=int, default=VaeConfig.crop, help="square crop size (the clip size: whole frames)")
    vae.add_argument("--decoder-only", action="store_true",
                     help="train only the decoder of --init: keeps the latent space (and a transformer trained on it)")
    vae.add_argument("--first-frame-weight", type=float, default=VaeConfig.first_frame_weight,
                     help="loss weight of frame 0 (the I2V image) relative to a later frame")

    enc = stages.add_parser("encode", help="procedural clips -> latent cache for the transformer stages")
    enc.add_argument("--model-dir", type=Path, required=True, help="folder with vae/, text_encoder/, tokenizer/")
    enc.add_argument("--clips", type=int, default=2000)
    enc.add_argument("--max-sequence-length", type=int, default=16)

    for name, help_text in (("base", "plain flow matching (scalar timesteps), all weights"),
                            ("lora", "Pusa FAFM LoRA (one timestep per latent frame) on a frozen base")):
        p = stages.add_parser(name, help=help_text)
        p.add_argument("--cache", type=Path, required=True, help="latent cache from the 'encode' stage")
        p.add_argument("--steps", type=int, default=TransformerConfig.steps)
        p.add_argument("--batch", type=int, default=TransformerConfig.batch)
        p.add_argument("--grad-accum", type=int, default=1)
        p.add_argument("--lr", type=float, default=TransformerConfig.lr)
        p.add_argument("--warmup", type=int, default=TransformerConfig.warmup)
        p.add_argument("--shift", type=float, default=TransformerConfig.shift)
        p.add_argument("--caption-dropout", type=float, default=TransformerConfig.caption_dropout)
        p.add_argument("--object-weight", type=float, default=TransformerConfig.object_weight,
                       help="extra loss weight (1 + this) where the cache marks the object; needs a cache with weights")
        p.add_argument("--gradient-checkpointing", action="store_true")
        p.add_argument("--checkpoint-every", type=int, default=0)
        p.add_argument("--resume", type=Path, default=None, help="an accelerate checkpoint folder to continue from")
        if name == "base":
            p.add_argument("--config", type=Path, required=True, help="JSON of WanTransformer3DModel config arguments")
        else:
            p.add_argument("--transformer", type=Path, required=True, help="the base transformer (diffusers format)")
            p.add_argument("--rank", type=int, default=512)
            p.add_argument("--clean-prob", type=float, default=0.0)
            p.add_argument("--sync-prob", type=float, default=0.0)
            p.add_argument("--prefix-prob", type=float, default=0.0,
                           help="share of samples whose first 1..F-1 latent frames are clean (I2V and extension)")

    for name, p in stages.choices.items():
        p.add_argument("--out", type=Path, required=True)
        if name != "encode":  # encoding is deterministic (clip seeds 0..clips-1) and runs in float32
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    accelerator = _accelerator(args)
    start = time.perf_counter()
    if args.stage == "vae":
        config = _config_from_args(VaeConfig, args, vae_overrides={**SMALL_VAE, "base_dim": args.base_dim})
        init = None
        if args.decoder_only and args.init is None:
            raise SystemExit("--decoder-only needs --init: a trained VAE whose decoder to fine-tune")
        if args.init is not None:
            folder = args.init / "vae" if (args.init / "vae" / "config.json").is_file() else args.init
            if not (folder / "config.json").is_file():
                raise SystemExit(f"--init {args.init}: no VAE there; give a folder with config.json (or a model folder with vae/)")
            init = AutoencoderKLWan.from_pretrained(folder)
        vae, losses = train_vae(config, accelerator, init)
        if accelerator.is_main_process:
            set_latent_stats(vae, list(range(config.train_seeds, config.train_seeds + args.stats_clips)))
            vae.save_pretrained(args.out / "vae", safe_serialization=True)
    elif args.stage == "encode":
        from transformers import AutoTokenizer, UMT5EncoderModel

        vae = AutoencoderKLWan.from_pretrained(args.model_dir / "vae").eval()
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir / "tokenizer")
        text_encoder = UMT5EncoderModel.from_pretrained(args.model_dir / "text_encoder").eval()
        encode_clips(vae, tokenizer, text_encoder, list(range(args.clips)), args.max_sequence_length).save(args.out)
        config, losses = None, []
    else:
        cache = LatentCache.load(args.cache)
        if args.stage == "base":
            config = _config_from_args(TransformerConfig, args)
            transformer = PusaTransformer3DModel(**json.loads(args.config.read_text()))
        else:
            config = _config_from_args(TransformerConfig, args, per_frame=True)
            # The 14B is read in bf16 when training in bf16: a float32 copy per process would not fit in RAM.
            dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32
            transformer = PusaTransformer3DModel.from_pretrained(args.transformer, torch_dtype=dtype)
        transformer, losses = train_transformer(config, cache, transformer, accelerator)
        save_transformer_outputs(config, transformer, accelerator)
    if accelerator.is_main_process:
        record = {"stage": args.stage, "seconds": time.perf_counter() - start, "final_loss": losses[-1] if losses else None,
                  "args": vars(args), "config": dataclasses.asdict(config) if config is not None else None}
        write_json(Path(args.out if args.out.suffix == "" else args.out.parent) / f"{args.stage}_record.json", record)


if __name__ == "__main__":
    main()

