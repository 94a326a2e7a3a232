"""Conditioning positions typed in latent slots, pixel frames or seconds, converted to latent slots.

Pusa conditions latent slots, but people think in frames and seconds. Slot 0 is pixel frame 0 alone;
slot k >= 1 holds pixel frames 4k-3..4k, so a pixel frame lands in exactly one slot, and two frames in
the same slot are refused (the slot takes one image). Every refusal names the field and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from . import facts
from .conditioning import POSITIONS_EXAMPLE, parse_positions
from .errors import PusaInputError

LATENT, FRAME, SECONDS = "latent", "frame", "seconds"
UNITS = (LATENT, FRAME, SECONDS)


def _check_unit(unit: object, field: str) -> str:
    if unit not in UNITS:
        raise PusaInputError(field, f"must be one of {', '.join(UNITS)}, got {unit!r}")
    return str(unit)


def _numbers(text: str | Sequence[float], field: str, example: str) -> list[float]:
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [i.strip() if isinstance(i, str) else i for i in items]
    if not items or all(i == "" for i in items):
        raise PusaInputError(field, f"is empty; type one value per image, e.g. {example}")
    out = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise PusaInputError(field, f"{item!r} is not a number; write e.g. {example}") from None
        if isinstance(item, bool) or not math.isfinite(value):
            raise PusaInputError(field, f"{item!r} is not a number; write e.g. {example}")
        out.append(value)
    return out


def _frames_to_slots(frames: Sequence[int], shown: Sequence[str], num_frames: int, field: str) -> tuple[int, ...]:
    slots: list[int] = []
    for frame, text in zip(frames, shown):
        if not 0 <= frame < num_frames:
            raise PusaInputError(
                field, f"{text} is outside the video: {num_frames} frames are numbered 0..{num_frames - 1}"
            )
        slot = facts.pixel_frame_to_latent(frame)
        if slot in slots:
            other = shown[slots.index(slot)]
            first, last = facts.latent_to_pixel_frames(slot)
            raise PusaInputError(
                field, f"{other} and {text} both fall in latent slot {slot} (frames {first}–{last}), which holds one "
                "image; move one of them at least 4 frames away",
            )
        slots.append(slot)
    return tuple(slots)


def to_latent_slots(
    text: str | Sequence[float], unit: str, num_frames: int, fps: float, field: str = "positions", unit_field: str = "position_unit"
) -> tuple[int, ...]:
    """``"0,80"`` in ``unit`` -> latent slots for a ``num_frames``-frame video at ``fps``.

    ``latent`` takes whole slot numbers;
    ``frame`` takes whole pixel frames; ``seconds`` takes times, rounded to the nearest frame.
    """
    unit = _check_unit(unit, unit_field)
    if unit == LATENT:
        slots = parse_positions(text, field)
        count = facts.latent_frame_count(num_frames)
        for slot in slots:
            if not 0 <= slot < count:
                raise PusaInputError(field, f"{slot} is out of range: {num_frames} frames have latent indices 0..{count - 1}")
        return slots
    if unit == FRAME:
        values = _numbers(text, field, "0,80 (pixel frames)")
        for value in values:
            if not value.is_integer():
                raise PusaInputError(field, f"{value:g} is not a whole frame number; write e.g. 0,80, or pick seconds")
        frames = [int(v) for v in values]
        return _frames_to_slots(frames, [f"frame {f}" for f in frames], num_frames, field)
    values = _numbers(text, field, "0,2.5 (seconds)")
    for value in values:
        if value < 0:
            raise PusaInputError(field, f"{value:g} s is before the start; times start at 0")
    frames = [round(v * fps) for v in values]
    return _frames_to_slots(frames, [f"{v:g} s" for v in values], num_frames, field)


def conversion_lines(text: str | Sequence[float], unit: str, num_frames: int, fps: float) -> list[str]:
    """One line per position saying where it lands, e.g. ``frame 80 -> latent slot 20 (frames 77–80)``."""
    slots = to_latent_slots(text, unit, num_frames, fps)
    values = [str(v) for v in parse_positions(text)] if unit == LATENT else [f"{v:g}" for v in _numbers(text, "positions", POSITIONS_EXAMPLE)]
    lines = []
    for value, slot in zip(values, slots):
        first, last = facts.latent_to_pixel_frames(slot)
        frames = f"frame {first}" if first == last else f"frames {first}–{last}"
        start, end = facts.latent_to_seconds(slot, fps)
        where = f"{frames}, {start:.2f}–{end:.2f} s"
        if unit == LATENT:
            lines.append(f"latent slot {slot} = {where}")
        else:
            given = f"frame {value}" if unit == FRAME else f"{value} s (frame {round(float(value) * fps)})"
            lines.append(f"{given} -> latent slot {slot} ({where})")
    return lines
