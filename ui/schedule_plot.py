"""A picture of Pusa's per-frame noise schedule, as inline SVG for ``gr.HTML``.

Each bar is one latent frame; its height is the noise it starts from (multiplier x sigma, so 1 is
pure noise, generated freely, and 0 is the input kept exactly). Conditioned frames are colored and
listed with the pixel frames and seconds they stand for, so the vectorized timestep is visible
before anything runs. Invalid positions or multipliers show the engine's own message instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from pusa_core.conditioning import frame_multiplier_table, parse_multipliers, parse_positions
from pusa_core.facts import is_frame_count, latent_frame_count, latent_to_pixel_frames, latent_to_seconds
from pusa_core.errors import PusaInputError

_BAR = 14  # px per latent frame in the SVG's own units; the SVG scales to the page width
_GAP = 3
_HEIGHT = 90
_FREE_COLOR = "#9ca3af"


def _conditioned_color(multiplier: float) -> str:
    """Teal when kept exactly (0) through to orange when nearly free (1)."""
    hue = round(175 - 145 * multiplier)
    return f"hsl({hue}, 75%, 42%)"


def _pixel_frames_text(index: int) -> str:
    first, last = latent_to_pixel_frames(index)
    return f"frame {first}" if first == last else f"frames {first}–{last}"


def _error_box(err: PusaInputError) -> str:
    return (
        '<div class="pusa-schedule pusa-schedule-error" style="padding:8px 10px;border:1px solid #dc2626;'
        'border-radius:6px;color:#dc2626">'
        f"<b>{escape(err.field)}</b>: {escape(err.message)}</div>"
    )


def _bars(table: Sequence[float], conditioned: set[int], fps: float) -> str:
    count = len(table)
    width = count * (_BAR + _GAP)
    label_every = 1 if count <= 24 else 5
    parts = [
        f'<svg viewBox="0 0 {width} {_HEIGHT + 16}" width="100%" style="max-width:{count * 32}px;max-height:160px" role="img" '
        f'aria-label="noise multiplier per latent frame">'
    ]
    for index, multiplier in enumerate(table):
        x = index * (_BAR + _GAP)
        height = max(2.0, multiplier * _HEIGHT)  # a kept-exactly frame still gets a visible sliver
        color = _conditioned_color(multiplier) if index in conditioned else _FREE_COLOR
        start, end = latent_to_seconds(index, fps)
        state = f"conditioned, starts at {multiplier:g} x noise" if index in conditioned else "generated from noise"
        tip = f"latent {index} · {_pixel_frames_text(index)} · {start:.2f}–{end:.2f} s · {state}"
        parts.append(
            f'<rect x="{x}" y="{_HEIGHT - height:.1f}" width="{_BAR}" height="{height:.1f}" fill="{color}" rx="2">'
            f"<title>{escape(tip)}</title></rect>"
        )
        if index % label_every == 0 or index == count - 1:
            parts.append(
                f'<text x="{x + _BAR / 2}" y="{_HEIGHT + 13}" font-size="9" text-anchor="middle" fill="currentColor">{index}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _table(positions: Sequence[int], multipliers: Sequence[float], fps: float, sources: Sequence[str] | None) -> str:
    if not positions:
        return ""
    head = "<tr><th>Position (latent)</th><th>Pixel frames</th><th>Time</th><th>Multiplier</th>"
    head += "<th>Input</th></tr>" if sources else "</tr>"
    rows = []
    for i, (position, multiplier) in enumerate(zip(positions, multipliers)):
        start, end = latent_to_seconds(position, fps)
        source = f"<td>{escape(sources[i])}</td>" if sources and i < len(sources) else ("<td></td>" if sources else "")
        rows.append(
            f"<tr><td>{position}</td><td>{_pixel_frames_text(position)}</td><td>{start:.2f}–{end:.2f} s</td>"
            f"<td>{multiplier:g}</td>{source}</tr>"
        )
    return f'<table style="width:100%;font-size:0.9em;margin-top:6px">{head}{"".join(rows)}</table>'


def schedule_html(
    num_frames: int | float,
    positions: str | Sequence[int],
    multipliers: str | Sequence[float],
    fps: int | float,
    sources: Sequence[str] | None = None,
) -> str:
    """The schedule of a job with ``num_frames`` pixel frames; ``sources`` names the input behind each position.

    ``positions=()`` draws a job with no conditioning frames.
    """
    try:
        if isinstance(num_frames, bool) or not isinstance(num_frames, (int, float)) or not isinstance(fps, (int, float)):
            raise PusaInputError("num_frames", f"must be a number, got {num_frames!r}")
        frames = int(num_frames) if float(num_frames).is_integer() else num_frames
        if not is_frame_count(frames):
            raise PusaInputError("num_frames", f"must be 4k+1 (5, 9, ..., 81), got {num_frames!r}")
        if not fps or fps <= 0:
            raise PusaInputError("fps", f"must be positive, got {fps!r}")
        if positions == ():  # text-to-video: every frame generated freely
            parsed_positions, parsed_multipliers = (), ()
            table = [1.0] * latent_frame_count(frames)
        else:
            parsed_positions = parse_positions(positions, "positions")
            parsed_multipliers = parse_multipliers(multipliers, "multipliers")
            table = frame_multiplier_table(frames, parsed_positions, parsed_multipliers)
    except PusaInputError as err:
        return _error_box(err)
    count = latent_frame_count(frames)
    summary = (
        f"{frames} frames = {count} latent frames at {fps:g} fps ({frames / fps:.2f} s). "
        f"{len(parsed_positions)} conditioned; bar height = noise each frame starts from (1 = free)."
    )
    return (
        '<div class="pusa-schedule">'
        f'<div style="font-size:0.9em;margin-bottom:4px">{escape(summary)}</div>'
        f"{_bars(table, set(parsed_positions), fps)}"
        f"{_table(parsed_positions, parsed_multipliers, fps, sources)}</div>"
    )
