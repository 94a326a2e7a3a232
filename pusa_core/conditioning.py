"""Requests -> a latent conditioning plan, and their validation against :mod:`pusa_core.facts`.

Conditioning positions are latent indices (see :mod:`pusa_core.facts` for the frame arithmetic).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import facts
from .cache_choice import check_step_cache
from .errors import PusaInputError
from .facts import SIZE_MULTIPLE, latent_frame_count
from .schedule import frame_multipliers
from .requests import FRAMES_FROM, ImageToVideo, MultiFrames, Request, Settings, TextToVideo, VideoToVideo

POSITIONS_EXAMPLE = "0,20"
MULTIPLIERS_EXAMPLE = "0.2,0.5"
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[x×X*,]\s*(\d+)\s*$")


def parse_size(text: object, how: str = "type WIDTHxHEIGHT") -> tuple[int, int]:
    """``"832x480"`` -> ``(832, 480)``. Validation checks the numbers; this checks the shape of the text.

    ``how`` says how to give a size where it is asked for (the page also offers presets).
    """
    match = _SIZE_PATTERN.match(text) if isinstance(text, str) else None
    if not match:
        raise PusaInputError("size", f"{text!r} is not a size; {how}, e.g. 832x480")
    return int(match.group(1)), int(match.group(2))


def parse_number(value: Any, field: str) -> int | float | Any:
    """A typed number as an int when it is whole; text that reads as a number is read; the rest goes to validation."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PusaInputError(field, "is empty; type a number")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise PusaInputError(field, f"{value!r} is not a number") from None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _split(text: object, field: str, example: str) -> list:
    """A comma-separated string or a list -> its items; anything else is an error naming ``field``."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise PusaInputError(field, f"is empty; give a comma-separated list, e.g. {example}")
    if isinstance(text, str):
        parts = [p.strip() for p in text.replace(";", ",").split(",")]
        if any(p == "" for p in parts):
            raise PusaInputError(field, f"{text!r} has an empty item; write a comma-separated list like {example}")
        return parts
    if isinstance(text, (list, tuple)):
        return list(text)
    raise PusaInputError(field, f"must be a comma-separated list like {example}, got {type(text).__name__}")


def parse_positions(text: str | Sequence[int], field: str = "positions") -> tuple[int, ...]:
    """``"0, 20"`` -> ``(0, 20)``; anything that is not a whole number is an error naming ``field``."""
    out = []
    for item in _split(text, field, POSITIONS_EXAMPLE):
        problem = f"{item!r} is not a whole number; positions are latent frame indices like {POSITIONS_EXAMPLE}"
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise PusaInputError(field, problem) from None
        if isinstance(item, bool) or not math.isfinite(value) or not value.is_integer():
            raise PusaInputError(field, problem)
        out.append(int(value))
    return tuple(out)


def parse_multipliers(text: str | Sequence[float], field: str = "multipliers") -> tuple[float, ...]:
    """``"0.2,0.5"`` -> ``(0.2, 0.5)``; each must be a number in [0, 1]."""
    out = []
    limit = facts.NOISE_MULTIPLIER
    for item in _split(text, field, MULTIPLIERS_EXAMPLE):
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise PusaInputError(
                field, f"{item!r} is not a number; use values from {limit.low:g} to {limit.high:g} like {MULTIPLIERS_EXAMPLE}"
            ) from None
        if isinstance(item, bool) or not math.isfinite(value) or not limit.low <= value <= limit.high:
            raise PusaInputError(
                field, f"{item!r} is outside [{limit.low:g}, {limit.high:g}]; 0 keeps the frame exactly, 1 ignores it"
            )
        out.append(value)
    return tuple(out)


def _check(limit: facts.Limit, value: object, field: str | None = None, hint: str = "") -> None:
    problem = limit.check(value)
    if problem:
        raise PusaInputError(field or limit.field, problem + hint)


def validate_settings(settings: Settings, require_prompt: bool = False) -> None:
    """Raise :class:`PusaInputError` for the first settings field that cannot run."""
    s = settings
    for name, text in (("prompt", s.prompt), ("negative_prompt", s.negative_prompt)):
        if not isinstance(text, str):
            raise PusaInputError(name, f"must be text, got {type(text).__name__}")
        if len(text) > facts.MAX_PROMPT_CHARS:
            raise PusaInputError(
                name,
                f"has {len(text):,} characters; the limit is {facts.MAX_PROMPT_CHARS:,} (the text encoder reads at most "
                f"{facts.TEXT_TOKENS} tokens, about 2,000 characters); shorten it",
            )
    if require_prompt and not s.prompt.strip():
        raise PusaInputError("prompt", "is empty; describe the video you want (text-to-video has nothing else to go on)")
    _check(facts.STEPS, s.steps, hint=f"; {facts.DEFAULT_STEPS} is Pusa's default")
    _check(facts.CFG, s.cfg, hint="; 1 turns guidance off")
    _check(facts.LORA_ALPHA, s.lora_alpha, hint=f"; {facts.DEFAULT_ALPHA:g} is Pusa's default")
    _check(facts.SHIFT, s.shift)
    side = facts.SIDE
    for name, value in (("width", s.width), ("height", s.height)):
        if side.check(value) or value % SIZE_MULTIPLE:
            fix = (
                int(max(side.low, min(side.high, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)))
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                else facts.DEFAULT_WIDTH
            )
            raise PusaInputError(
                name, f"must be a multiple of {SIZE_MULTIPLE} between {side.low:g} and {side.high:g}, got {value!r}; try {fix}"
            )
    n = s.num_frames
    if facts.FRAMES.check(n) or not facts.is_frame_count(n):
        fix = (
            facts.nearest_frame_count(n)
            if isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n)
            else facts.DEFAULT_FRAMES
        )
        raise PusaInputError(
            "num_frames", f"must be 4k+1 (1, 5, ..., 81, ...) up to {facts.FRAMES.high:g}, got {n!r}; try {fix}"
        )
    _check(facts.FPS, s.fps, hint=f"; Wan's native rate is {facts.DEFAULT_FPS}")
    if s.fit not in ("crop", "pad"):
        raise PusaInputError("fit", f"must be 'crop' or 'pad', got {s.fit!r}")
    if s.seed is not None:
        _check(facts.SEED, s.seed, hint=" (or empty for random)")
    _validate_loras(s)
    check_step_cache(s.step_cache, s.steps, s.preset)


def _validate_loras(s: Settings) -> None:
    """The preset is known and runs at cfg 1 when Fast; every extra LoRA weight is a number in range."""
    if s.preset not in facts.PRESETS:
        raise PusaInputError("preset", f"must be one of {', '.join(map(repr, facts.PRESETS))}, got {s.preset!r}")
    if s.preset == facts.FAST and s.cfg != facts.FAST_CFG:
        raise PusaInputError(
            "cfg", f"must be {facts.FAST_CFG:g} with the Fast preset, got {s.cfg!r}: its LightX2V LoRA is distilled to "
            "run without guidance; set cfg to 1, or choose the Quality preset"
        )
    if not isinstance(s.extra_loras, Mapping):
        raise PusaInputError("extra_loras", f"must map LoRA names to weights, got {type(s.extra_loras).__name__}")
    for name, weight in s.extra_loras.items():
        if problem := facts.EXTRA_LORA_WEIGHT.check(weight):
            raise PusaInputError("extra_loras", f"{name!r} {problem}")


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
        if request.frames_from not in FRAMES_FROM:
            raise PusaInputError(
                "frames_from", f"must be one of {', '.join(map(repr, FRAMES_FROM))}, got {request.frames_from!r}; "
                "'first' takes the upload's first frames, 'last' its last frames (to continue it)"
            )
        positions, multipliers = tuple(request.positions), tuple(request.multipliers)
        validate_positions(positions, multipliers, s.num_frames)
        return Conditioning(positions, multipliers, count)
    raise TypeError(f"unknown request type {type(request).__name__}")
