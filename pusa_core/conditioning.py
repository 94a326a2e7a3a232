"""Requests -> a latent conditioning plan, plus the frame <-> latent-slot arithmetic and validation.

Wan's VAE compresses time 4x causally: latent 0 is pixel frame 0 alone, latent k >= 1 covers pixel
frames 4k-3..4k. Conditioning positions are latent indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import PusaInputError
from .schedule import frame_multipliers
from .requests import ImageToVideo, MultiFrames, Request, Settings, TextToVideo, VideoToVideo

TEMPORAL_COMPRESSION = 4
SIZE_MULTIPLE = 16  # VAE 8x times the transformer's 2x2 patch
MAX_SIDE = 1920
MAX_FRAMES = 201
MAX_STEPS = 100
MAX_SEED = 2**32 - 1


def latent_frame_count(num_frames: int) -> int:
    return (num_frames - 1) // TEMPORAL_COMPRESSION + 1


def latent_to_pixel_frames(index: int) -> tuple[int, int]:
    """First and last pixel frame (inclusive) that latent slot ``index`` stands for."""
    if index == 0:
        return 0, 0
    return TEMPORAL_COMPRESSION * index - 3, TEMPORAL_COMPRESSION * index


def pixel_frame_to_latent(frame: int) -> int:
    """The latent slot that holds pixel frame ``frame``."""
    return 0 if frame == 0 else (frame + TEMPORAL_COMPRESSION - 1) // TEMPORAL_COMPRESSION


def latent_to_seconds(index: int, fps: float) -> tuple[float, float]:
    """Start and end time (seconds) of the pixel frames behind latent slot ``index``."""
    first, last = latent_to_pixel_frames(index)
    return first / fps, (last + 1) / fps


def seconds_to_latent(seconds: float, fps: float) -> int:
    return pixel_frame_to_latent(int(round(seconds * fps)))


def frames_needed(positions: Sequence[int]) -> int:
    """Pixel frames a video must have to supply latent slots ``positions``."""
    return TEMPORAL_COMPRESSION * max(positions) + 1


def _split(text: str | Sequence, field: str) -> list:
    if isinstance(text, str):
        parts = [p.strip() for p in text.replace(";", ",").split(",")]
        if not text.strip():
            raise PusaInputError(field, "is empty; give a comma-separated list, e.g. 0,20")
        if any(p == "" for p in parts):
            raise PusaInputError(field, f"{text!r} has an empty item; write a comma-separated list like 0,20")
        return parts
    return list(text)


def parse_positions(text: str | Sequence[int], field: str = "positions") -> tuple[int, ...]:
    """``"0, 20"`` -> ``(0, 20)``; anything that is not a whole number is an error naming ``field``."""
    out = []
    for item in _split(text, field):
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise PusaInputError(field, f"{item!r} is not a whole number; positions are latent frame indices like 0,20") from None
        if not value.is_integer():
            raise PusaInputError(field, f"{item!r} is not a whole number; positions are latent frame indices like 0,20")
        out.append(int(value))
    return tuple(out)


def parse_multipliers(text: str | Sequence[float], field: str = "multipliers") -> tuple[float, ...]:
    """``"0.2,0.5"`` -> ``(0.2, 0.5)``; each must be a number in [0, 1]."""
    out = []
    for item in _split(text, field):
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise PusaInputError(field, f"{item!r} is not a number; use values from 0 to 1 like 0.2,0.5") from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise PusaInputError(field, f"{item!r} is outside [0, 1]; 0 keeps the frame exactly, 1 ignores it")
        out.append(value)
    return tuple(out)


def validate_settings(settings: Settings, require_prompt: bool = False) -> None:
    """Raise :class:`PusaInputError` for the first settings field that cannot run."""
    s = settings
    if require_prompt and not s.prompt.strip():
        raise PusaInputError("prompt", "is empty; describe the video you want (text-to-video has nothing else to go on)")
    if not isinstance(s.steps, int) or not 1 <= s.steps <= MAX_STEPS:
        raise PusaInputError("steps", f"must be a whole number from 1 to {MAX_STEPS}, got {s.steps!r}; 10 is the Pusa default")
    for name, value, low, high in (("cfg", s.cfg, 1.0, 30.0), ("lora_alpha", s.lora_alpha, 0.0, 5.0), ("shift", s.shift, 0.1, 20.0)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
            raise PusaInputError(name, f"must be a number from {low:g} to {high:g}, got {value!r}")
    for name, value in (("width", s.width), ("height", s.height)):
        if not isinstance(value, int) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE or value > MAX_SIDE:
            fix = max(SIZE_MULTIPLE, min(MAX_SIDE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)) if isinstance(value, (int, float)) else 832
            raise PusaInputError(
                name, f"must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and {MAX_SIDE}, got {value!r}; try {fix}"
            )
    n = s.num_frames
    if not isinstance(n, int) or n < 1 or (n - 1) % TEMPORAL_COMPRESSION or n > MAX_FRAMES:
        fix = min(MAX_FRAMES, max(1, round((n - 1) / 4) * 4 + 1)) if isinstance(n, (int, float)) else 81
        raise PusaInputError("num_frames", f"must be 4k+1 (1, 5, ..., 81, ...) up to {MAX_FRAMES}, got {n!r}; try {fix}")
    if not isinstance(s.fps, (int, float)) or not 1 <= s.fps <= 120:
        raise PusaInputError("fps", f"must be from 1 to 120, got {s.fps!r}; Wan's native rate is 16")
    if s.fit not in ("crop", "pad"):
        raise PusaInputError("fit", f"must be 'crop' or 'pad', got {s.fit!r}")
    if s.seed is not None and (not isinstance(s.seed, int) or not 0 <= s.seed <= MAX_SEED):
        raise PusaInputError("seed", f"must be a whole number from 0 to {MAX_SEED} (or empty for random), got {s.seed!r}")


def validate_positions(
    positions: Sequence[int],
    multipliers: Sequence[float],
    num_frames: int,
    positions_field: str = "positions",
    multipliers_field: str = "multipliers",
) -> None:
    """Positions in range and unique; one multiplier in [0, 1] per position."""
    count = latent_frame_count(num_frames)
    if not positions:
        raise PusaInputError(positions_field, "is empty; give at least one latent index, e.g. 0")
    if len(multipliers) != len(positions):
        raise PusaInputError(
            multipliers_field,
            f"has {len(multipliers)} values for {len(positions)} positions; give one multiplier per position",
        )
    for p in positions:
        if not isinstance(p, int) or not 0 <= p < count:
            raise PusaInputError(
                positions_field, f"{p!r} is out of range: {num_frames} frames have latent indices 0..{count - 1}"
            )
    repeated = sorted({p for p in positions if list(positions).count(p) > 1})
    if repeated:
        raise PusaInputError(positions_field, f"{repeated[0]} is listed more than once; each latent index may appear once")
    parse_multipliers(list(multipliers), multipliers_field)


def frame_multiplier_table(num_frames: int, positions: Sequence[int], multipliers: Sequence[float]) -> list[float]:
    """Noise multiplier for every latent frame (1 = generated freely), after validation."""
    validate_positions(positions, multipliers, num_frames)
    table = [1.0] * latent_frame_count(num_frames)
    for p, m in zip(positions, multipliers):
        table[p] = float(m)
    return table


@dataclass(frozen=True)
class Conditioning:
    """What the sampler needs from a request, before VAE encoding: where, how noisy, and from what."""

    positions: tuple[int, ...]
    multipliers: tuple[float, ...]
    num_latent_frames: int

    def multiplier_vector(self) -> torch.Tensor:
        return frame_multipliers(self.num_latent_frames, dict(zip(self.positions, self.multipliers)))


def plan_request(request: Request) -> Conditioning:
    """Validate ``request`` and return its conditioning positions and multipliers (no media is read)."""
    s = request.settings
    validate_settings(s, require_prompt=isinstance(request, TextToVideo))
    count = latent_frame_count(s.num_frames)
    if isinstance(request, TextToVideo):
        return Conditioning((), (), count)
    if isinstance(request, ImageToVideo):
        if request.image is None or (isinstance(request.image, str) and not request.image):
            raise PusaInputError("image", "is missing; upload the image the video should start from")
        (m,) = parse_multipliers([request.noise_multiplier], "noise_multiplier")
        return Conditioning((0,), (m,), count)
    if isinstance(request, MultiFrames):
        positions, multipliers = tuple(request.positions), tuple(request.multipliers)
        if len(request.images) < 1:
            raise PusaInputError("images", "are missing; upload one image per position (at least two for start/end)")
        validate_positions(positions, multipliers, s.num_frames)
        if len(request.images) != len(positions):
            raise PusaInputError(
                "positions", f"has {len(positions)} entries for {len(request.images)} images; give one position per image"
            )
        return Conditioning(positions, multipliers, count)
    if isinstance(request, VideoToVideo):
        if not request.video:
            raise PusaInputError("video", "is missing; upload the video to extend or complete")
        positions, multipliers = tuple(request.positions), tuple(request.multipliers)
        validate_positions(positions, multipliers, s.num_frames)
        return Conditioning(positions, multipliers, count)
    raise TypeError(f"unknown request type {type(request).__name__}")
