"""Evaluate a small Pusa model on held-out procedural clips; print the numbers and write frame strips.

    python -m pusa_core.training.evaluate --model-dir weights/pusa-tiny --strips docs/tiny
    python -m pusa_core.training.evaluate --model-dir weights/pusa-tiny --step-cache first-block:0.1

With ``--step-cache`` every generation runs with that diffusers cache hook (``pusa_core.step_cache``),
and the metrics add ``passes``: transformer passes, full ones and skipped ones.

Tasks (the model's own defaults for steps, cfg, alpha and noise multiplier unless overridden):
- I2V: first frame given. First-frame PSNR after decoding; the object is tracked by colour: is it
  one blob of the right size in every frame, does it start moving the captioned way, how well a
  straight (or one-bounce) constant-velocity path fits it.
- Start/end: first and last frame given. Distance of the tracked object to the true start and end.
- Extension: the first 5 frames (2 latent frames) of a straight clip given. The velocity over the
  generated frames against the clip's true velocity.
- Base vs LoRA: the same I2V with the LoRA at 0 (the scalar-timestep base) and at its alpha, and
  text-to-video with both, to show the LoRA adds I2V and keeps T2V. I2V also reports the mean
  squared error of the generated latent frames against the clip's own latents (``latent_mse``,
  ``next_latent_mse`` for the frame right after the given one), a measure the VAE cannot blur.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKLWan
from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

from ..latents import decode_latents, encode_pixels
from ..lora import load_lora, set_lora_alpha
from ..sampling import sample
from ..cache_choice import parse_step_cache
from ..facts import DEFAULT_SHIFT, SPATIAL_COMPRESSION, STEP_CACHE_OFF, latent_frame_count
from ..schedule import frame_multipliers
from ..step_cache import PassCount, step_caching
from ..text import encode_prompts
from ..transformer import PusaTransformer3DModel
from .data import DIRECTIONS, Clip, make_clip
from .make_tiny import HELD_OUT_SEED
from .tracking import Track, bounce_fit_rms, intact, linear_fit_rms, track, velocity
from .train import LORA_FILE

STRIP_FRAMES = 5  # frames shown per row of a strip, evenly spaced


@dataclass
class TinyModel:
    transformer: PusaTransformer3DModel
    vae: AutoencoderKLWan
    text_encoder: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerFast
    defaults: dict[str, Any]


def load_model(model_dir: Path) -> TinyModel:
    """Read a ``make_tiny`` folder; the LoRA is attached at the folder's default alpha."""
    missing = [n for n in ("transformer", "vae", "text_encoder", "tokenizer", LORA_FILE, "defaults.json")
               if not (model_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"--model-dir {model_dir} lacks {missing}; write it with python -m pusa_core.training.make_tiny")
    defaults = json.loads((model_dir / "defaults.json").read_text())
    transformer = PusaTransformer3DModel.from_pretrained(model_dir / "transformer").eval()
    load_lora(transformer, model_dir / LORA_FILE, alpha=defaults["lora_alpha"])
    return TinyModel(
        transformer=transformer,
        vae=AutoencoderKLWan.from_pretrained(model_dir / "vae").eval(),
        text_encoder=UMT5EncoderModel.from_pretrained(model_dir / "text_encoder").eval(),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(model_dir / "tokenizer"),
        defaults=defaults,
    )


@dataclass(frozen=True)
class EvalSettings:
    steps: int
    cfg: float
    alpha: float
    multiplier: float
    shift: float = DEFAULT_SHIFT
    step_cache: str = STEP_CACHE_OFF  # a pusa_core.cache_choice setting, e.g. "first-block:0.05"


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``[1, 3, T, H, W]`` in [-1, 1] -> ``[T, H, W, 3]`` uint8."""
    return ((pixels[0].permute(1, 2, 3, 0).cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


class Evaluator:
    """Generates from held-out clips with one model and measures the results."""

    def __init__(self, model: TinyModel, settings: EvalSettings, seed: int = 0) -> None:
        self.model = model
        self.settings = settings
        self.seed = seed
        d = model.defaults
        self.frames, self.height, self.width = d["num_frames"], d["height"], d["width"]
        self.max_length = d["max_sequence_length"]
        self.negative = self._embed("")
        self.cache = parse_step_cache(settings.step_cache)
        self.passes = PassCount()  # every generation's, added up

    def _embed(self, text: str) -> torch.Tensor:
        return encode_prompts(self.model.tokenizer, self.model.text_encoder, [text], self.max_length)

    def clip(self, index: int, straight: bool = False) -> Clip:
        """The index-th held-out clip (optionally the index-th straight one)."""
        seed = HELD_OUT_SEED + index
        clip = make_clip(seed, self.frames, self.height)
        while straight and clip.spec.bounces:
            seed += 1_000_000
            clip = make_clip(seed, self.frames, self.height)
        return clip

    def generate(self, caption: str, cond: dict[int, torch.Tensor], alpha: float, seed: int) -> tuple[np.ndarray, torch.Tensor]:
        """Frames ``[T, H, W, 3]`` uint8 and the final latents for one prompt and conditioning plan."""
        s = self.settings
        set_lora_alpha(self.model.transformer, alpha)
        latent_frames = latent_frame_count(self.frames)
        shape = (1, self.model.vae.config.z_dim, latent_frames, self.height // SPATIAL_COMPRESSION, self.width // SPATIAL_COMPRESSION)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        multipliers = frame_multipliers(latent_frames, {i: s.multiplier for i in cond})
        with step_caching(self.model.transformer, self.cache, s.steps) as count:
            result = sample(self.model.transformer, noise, cond, multipliers, self._embed(caption), self.negative, s.steps,
                            s.cfg, shift=s.shift)
        self.passes.passes += count.passes
        self.passes.full += count.full
        return to_uint8(decode_latents(self.model.vae, result.latents)), result.latents

    def image_latent(self, frame: torch.Tensor) -> torch.Tensor:
        """One frame ``[3, H, W]`` encoded alone, as the app encodes a conditioning image: ``[1, 16, 1, h, w]``."""
        return encode_pixels(self.model.vae, frame[None, :, None])


def _gt_frames(clip: Clip) -> np.ndarray:
    return ((clip.pixels.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def motion_metrics(frames: np.ndarray, clip: Clip) -> dict[str, float]:
    """Tracking numbers of generated ``frames`` for the clip's object."""
    spec = clip.spec
    reference = track(_gt_frames(clip), spec.colour, spec.background)
    result: Track = track(frames, spec.colour, spec.background)
    ok = intact(result, float(reference.areas[0]))
    found = bool(np.all(np.isfinite(result.positions[:, 0])))
    axis = np.array(DIRECTIONS[spec.direction])
    out = {"intact": float(ok.mean()), "found_all": float(found)}
    early = min(4, len(frames) - 1)
    if np.all(np.isfinite(result.positions[[0, early], 0])):
        out["right_way"] = float((result.positions[early] - result.positions[0]) @ axis > 1.0)
    if found:
        out["path_rms"] = bounce_fit_rms(result.positions) if spec.bounces else linear_fit_rms(result.positions)
    return out


def _mean(rows: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return round(float(np.mean(values)), 3) if values else None


def _summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    keys = sorted({k for r in rows for k in r})
    return {k: _mean(rows, k) for k in keys} | {"clips": len(rows)}


def strip(rows: list[np.ndarray], scale: int = 2) -> np.ndarray:
    """Rows of frames ``[T, H, W, 3]`` -> one RGB image of STRIP_FRAMES evenly spaced frames per row."""
    picks = np.linspace(0, len(rows[0]) - 1, STRIP_FRAMES).round().astype(int)
    gap = 2
    lines = []
    for frames in rows:
        cells = []
        for i in picks:
            cells += [frames[i], np.full((frames.shape[1], gap, 3), 255, np.uint8)]
        row = np.concatenate(cells[:-1], axis=1)
        lines += [row, np.full((gap, row.shape[1], 3), 255, np.uint8)]
    image = np.concatenate(lines[:-1], axis=0)
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image[..., ::-1]):
        raise OSError(f"could not write {path}")


TaskResult = tuple[dict[str, float], np.ndarray]  # metrics of one generation and its frames


def _latent_mse(generated: torch.Tensor, truth: torch.Tensor, frames: slice) -> torch.Tensor:
    """Per latent frame MSE over ``frames`` (independent of the VAE's quality)."""
    return (generated[:, :, frames] - truth[:, :, frames]).pow(2).mean(dim=(0, 1, 3, 4))


def vae_row(ev: Evaluator, clip: Clip, clip_latents: torch.Tensor) -> dict[str, float]:
    """Reconstruction PSNR, and the last frame's PSNR when its chunk latent is that frame encoded alone.

    The second is what start/end asks of the VAE: the end keyframe is encoded alone but decoded as
    the last chunk of a video.
    """
    gt = _gt_frames(clip)
    recon = to_uint8(decode_latents(ev.model.vae, clip_latents))
    swapped = clip_latents.clone()
    swapped[:, :, -1:] = ev.image_latent(clip.pixels[:, -1])
    keyframe = to_uint8(decode_latents(ev.model.vae, swapped))
    return {"psnr": float(np.mean([psnr(a, b) for a, b in zip(recon, gt)])), "keyframe_psnr": psnr(keyframe[-1], gt[-1])}


def i2v_row(ev: Evaluator, clip: Clip, clip_latents: torch.Tensor, alpha: float, seed: int) -> TaskResult:
    """First frame given (encoded alone, as the app does it)."""
    gt = _gt_frames(clip)
    out, latents = ev.generate(clip.caption, {0: ev.image_latent(clip.pixels[:, 0])}, alpha, seed)
    mse = _latent_mse(latents, clip_latents, slice(1, None))
    row = {"first_psnr": psnr(out[0], gt[0]), "video_psnr": float(np.mean([psnr(a, b) for a, b in zip(out, gt)])),
           "latent_mse": float(mse.mean()), "next_latent_mse": float(mse[0])}
    return row | motion_metrics(out, clip), out


def start_end_row(ev: Evaluator, clip: Clip, clip_latents: torch.Tensor, alpha: float, seed: int) -> TaskResult:
    """First and last frame given: does the object start and end where the clip's does."""
    last = latent_frame_count(ev.frames) - 1
    cond = {0: ev.image_latent(clip.pixels[:, 0]), last: ev.image_latent(clip.pixels[:, -1])}
    out, latents = ev.generate(clip.caption, cond, alpha, seed)
    row = motion_metrics(out, clip)
    if last > 1:
        row["mid_latent_mse"] = float(_latent_mse(latents, clip_latents, slice(1, last)).mean())
    got = track(out, clip.spec.colour, clip.spec.background).positions
    for key, index in (("start_err", 0), ("end_err", -1)):
        if np.isfinite(got[index, 0]):
            row[key] = float(np.linalg.norm(got[index] - clip.positions[index]))
    return row, out


def extension_row(ev: Evaluator, clip: Clip, clip_latents: torch.Tensor, alpha: float, seed: int) -> TaskResult:
    """First 5 frames (2 latent frames) of a straight clip given: is the velocity kept."""
    given = {0: clip_latents[:, :, :1], 1: clip_latents[:, :, 1:2]}
    out, latents = ev.generate(clip.caption, given, alpha, seed)
    row: dict[str, float] = {}
    if latents.shape[2] > 2:
        row["rest_latent_mse"] = float(_latent_mse(latents, clip_latents, slice(2, None)).mean())
    positions = track(out, clip.spec.colour, clip.spec.background).positions[4:]
    truth = clip.spec.speed * np.array(DIRECTIONS[clip.spec.direction])
    row["found_all"] = float(np.all(np.isfinite(positions[:, 0])))
    if row["found_all"]:
        v = velocity(positions)
        row |= {"speed_err": float(np.linalg.norm(v - truth)), "speed_ratio": float(np.linalg.norm(v) / np.linalg.norm(truth))}
    return row, out


def t2v_row(ev: Evaluator, clip: Clip, clip_latents: torch.Tensor, alpha: float, seed: int) -> TaskResult:
    """Caption only: is the captioned object there, whole, moving the captioned way."""
    out, _ = ev.generate(clip.caption, {}, alpha, seed + 10_000)
    return motion_metrics(out, clip), out


TASKS = {"i2v": i2v_row, "start_end": start_end_row, "extension": extension_row, "t2v": t2v_row}


def evaluate(model: TinyModel, settings: EvalSettings, clips: int, strips: Path | None) -> dict[str, Any]:
    """Run every task with the LoRA and with the base on ``clips`` held-out clips (the same noise for both)."""
    ev = Evaluator(model, settings)
    rows: dict[str, list[dict[str, float]]] = {"vae_recon": []}
    examples: dict[str, np.ndarray] = {}
    for i in range(clips):
        for task, run in TASKS.items():
            # Extension needs a clip without a bounce, so its true velocity continues.
            clip = ev.clip(i, straight=task == "extension")
            clip_latents = encode_pixels(model.vae, clip.pixels[None])
            if task == "i2v":
                rows["vae_recon"].append(vae_row(ev, clip, clip_latents))
            for variant, alpha in (("lora", settings.alpha), ("base", 0.0)):
                row, out = run(ev, clip, clip_latents, alpha, i)
                rows.setdefault(f"{task}_{variant}", []).append(row)
                if i == 0:
                    examples[f"{task}_{variant}"] = out
                    examples[f"{task}_gt"] = _gt_frames(clip)

    metrics: dict[str, Any] = {name: _summary(r) for name, r in rows.items()}
    metrics["settings"] = settings.__dict__
    metrics["passes"] = {"passes": ev.passes.passes, "full": ev.passes.full, "skipped": ev.passes.skipped}
    if strips is not None:
        for task in TASKS:
            # Rows: the held-out clip (not for T2V, which has no conditioning), the base, the LoRA.
            shown = [examples[f"{task}_base"], examples[f"{task}_lora"]]
            write_png(strips / f"{task}.png", strip(shown if task == "t2v" else [examples[f"{task}_gt"], *shown]))
        metrics["example_captions"] = {task: ev.clip(0, straight=task == "extension").caption for task in TASKS}
    return metrics


@dataclass(frozen=True)
class Check:
    """One claim of the issue, as a measured value against a stated bound."""

    claim: str
    value: float | None  # None: could not be measured (e.g. the object was never found)
    bound: float
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.bound if self.higher_is_better else self.value <= self.bound


def checks(metrics: dict[str, Any]) -> list[Check]:
    """The issue's claims about the small model, each a bound on one metric (fixed before training)."""
    m = {name: values for name, values in metrics.items() if isinstance(values, dict)}

    def get(task: str, key: str) -> float | None:
        return m.get(task, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    lora_mse, base_mse = get("i2v_lora", "latent_mse"), get("i2v_base", "latent_mse")
    t2v_lora, t2v_base = get("t2v_lora", "found_all"), get("t2v_base", "found_all")
    return [
        Check("I2V: first frame matches the image (PSNR dB)", get("i2v_lora", "first_psnr"), 25.0, True),
        Check("I2V: object found in every frame (share of clips)", get("i2v_lora", "found_all"), 0.75, True),
        Check("I2V: object one blob of its size (share of frames)", get("i2v_lora", "intact"), 0.75, True),
        Check("I2V: object moves the captioned way (share of clips)", get("i2v_lora", "right_way"), 0.75, True),
        Check("I2V: path fits straight/one-bounce motion (RMS px)", get("i2v_lora", "path_rms"), 2.5, False),
        Check("start/end: starts at the given start (px)", get("start_end_lora", "start_err"), 4.0, False),
        Check("start/end: ends at the given end (px)", get("start_end_lora", "end_err"), 4.0, False),
        Check("extension: keeps the speed (speed error, px/frame)", get("extension_lora", "speed_err"), 0.6, False),
        Check("LoRA vs base: I2V latent MSE ratio", ratio(lora_mse, base_mse), 0.8, False),
        Check("LoRA keeps base T2V (found-all difference)",
              None if t2v_lora is None or t2v_base is None else t2v_lora - t2v_base, -0.15, True),
    ]


def format_checks(results: list[Check]) -> str:
    lines = []
    for c in results:
        value = "n/a" if c.value is None else f"{c.value:.3g}"
        sign = ">=" if c.higher_is_better else "<="
        lines.append(f"{'PASS' if c.passed else 'FAIL'}  {c.claim}: {value} (needs {sign} {c.bound:g})")
    return "\n".join(lines)


def format_metrics(metrics: dict[str, Any]) -> str:
    lines = []
    for name, values in metrics.items():
        if isinstance(values, dict):
            lines.append(f"{name:>16}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return "\n".join(lines)


# README rows: (label, task, metric key or keys shown as "a / b").
TABLE_ROWS: tuple[tuple[str, str, str | tuple[str, ...]], ...] = (
    ("I2V: object found in every frame (share of clips)", "i2v", "found_all"),
    ("I2V: frames where the object is one blob of its size", "i2v", "intact"),
    ("I2V: object moves the captioned way", "i2v", "right_way"),
    ("I2V: RMS px off a straight/one-bounce path", "i2v", "path_rms"),
    ("I2V: latent MSE of the frames after the image", "i2v", "latent_mse"),
    ("I2V: latent MSE of the next frame", "i2v", "next_latent_mse"),
    ("start/end: distance to the true start / end (px)", "start_end", ("start_err", "end_err")),
    ("start/end: latent MSE of the middle frames", "start_end", "mid_latent_mse"),
    ("extension: object found in every generated frame", "extension", "found_all"),
    ("extension: speed error (px/frame) / speed ratio", "extension", ("speed_err", "speed_ratio")),
    ("extension: latent MSE against the true continuation", "extension", "rest_latent_mse"),
    ("T2V: object found in every frame", "t2v", "found_all"),
    ("T2V: frames where the object is one blob of its size", "t2v", "intact"),
)


def markdown_tables(metrics: dict[str, Any], results: list[Check]) -> str:
    """Base vs base + LoRA, then the checks, as Markdown tables (the README's)."""

    def cell(values: dict[str, Any], key: str | tuple[str, ...]) -> str:
        if isinstance(key, tuple):
            return " / ".join(cell(values, k) for k in key)
        value = values.get(key)
        return "n/a" if value is None else f"{value:.3g}"

    lines = ["| measure | base (scalar timesteps) | base + Pusa LoRA |", "|---|---|---|"]
    for label, task, key in TABLE_ROWS:
        lines.append(f"| {label} | {cell(metrics.get(task + '_base', {}), key)} | {cell(metrics.get(task + '_lora', {}), key)} |")
    lines += ["", "| claim | measured | bound | |", "|---|---|---|---|"]
    for c in results:
        value = "n/a" if c.value is None else f"{c.value:.3g}"
        lines.append(f"| {c.claim} | {value} | {'≥' if c.higher_is_better else '≤'} {c.bound:g} | {'pass' if c.passed else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pusa_core.training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=16, help="held-out clips per task")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's defaults.json")
    parser.add_argument("--cfg", type=float, default=None)
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha")
    parser.add_argument("--noise-multiplier", type=float, default=None)
    parser.add_argument("--shift", type=float, default=None, help="the sampler's sigma shift")
    parser.add_argument("--step-cache", default=STEP_CACHE_OFF,
                        help="a diffusers cache hook and threshold, e.g. first-block:0.05 or taylorseer:2 (default off)")
    parser.add_argument("--strips", type=Path, default=None, help="folder for the frame-strip PNGs")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the README's tables here")
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error("--clips must be at least 1")
    model = load_model(args.model_dir)
    d = model.defaults
    settings = EvalSettings(
        steps=args.steps if args.steps is not None else d["steps"],
        cfg=args.cfg if args.cfg is not None else d["cfg"],
        alpha=args.alpha if args.alpha is not None else d["lora_alpha"],
        multiplier=args.noise_multiplier if args.noise_multiplier is not None else d["noise_multiplier"],
        shift=args.shift if args.shift is not None else d.get("shift", DEFAULT_SHIFT),
        step_cache=args.step_cache,
    )
    with torch.inference_mode():
        metrics = evaluate(model, settings, args.clips, args.strips)
    results = checks(metrics)
    metrics["checks"] = [{**c.__dict__, "passed": c.passed} for c in results]
    print(format_metrics(metrics))
    print(format_checks(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown_tables(metrics, results))


if __name__ == "__main__":
    main()
