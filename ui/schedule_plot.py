"""A picture of Pusa's per-frame noise schedule, as inline SVG for ``gr.HTML``.

Each bar is one latent frame; its height is the noise it starts from (multiplier x sigma, so 1 is
pure noise, generated freely, and 0 is the input kept exactly). Under the bars, three axes give each
slot's latent index, its first pixel frame and its start in seconds; a legend says what the colours
mean. Conditioned frames are listed with the pixel frames and seconds they stand for, so the
vectorized timestep is visible before anything runs. Invalid positions or multipliers show the
engine's own message instead.
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
_LEFT = 78  # room for the axis names
_ROW = 12  # height of one axis row under the bars
_FREE_COLOR = "#9ca3af"
AXES = ("latent slot", "first pixel frame", "starts at (s)")


def _conditioned_color(multiplier: float) -> str:
    """Teal when kept exactly (0) through to orange when nearly free (1)."""
    hue = round(175 - 145 * multiplier)
    return f"hsl({hue}, 75%, 42%)"


def _pixel_frames_text(index: int) -> str:
    first, last = latent_to_pixel_frames(index)
    return f"frame {first}" if first == last else f"frames {first}–{last}"


def error_html(err: PusaInputError) -> str:
    """The engine's message about a bad value, in the picture's place."""
    return (
        '<div class="pusa-schedule pusa-schedule-error" style="padding:8px 10px;border:1px solid #dc2626;'
        'border-radius:6px;color:#dc2626">'
        f"<b>{escape(err.field)}</b>: {escape(err.message)}</div>"
    )


def _label_every(count: int) -> int:
    """Every slot labelled while the labels fit under their bars, else every 2nd or 5th."""
    return 1 if count <= 8 else 2 if count <= 16 else 5


def _text(x: float, y: float, text: str, anchor: str = "middle") -> str:
    return f'<text x="{x}" y="{y}" font-size="9" text-anchor="{anchor}" fill="currentColor">{escape(text)}</text>'


def _axes(count: int, fps: float) -> list[str]:
    """The y axis (noise at the start, 0 to 1) and three x axes: latent slot, first pixel frame, start time."""
    right = _LEFT + count * (_BAR + _GAP)
    parts = [
        f'<line x1="{_LEFT - 3}" y1="0" x2="{_LEFT - 3}" y2="{_HEIGHT}" stroke="currentColor" stroke-width="0.6"/>',
        f'<line x1="{_LEFT - 3}" y1="{_HEIGHT + 1}" x2="{right}" y2="{_HEIGHT + 1}" stroke="currentColor" stroke-width="0.6"/>',
        _text(_LEFT - 6, 8, "1 free", "end"),
        _text(_LEFT - 6, _HEIGHT, "0 kept", "end"),
    ]
    every = _label_every(count)
    for row, name in enumerate(AXES):
        y = _HEIGHT + 12 + row * _ROW
        parts.append(_text(_LEFT - 6, y, name, "end"))
        for index in range(count):
            if index % every and index != count - 1:
                continue
            first = latent_to_pixel_frames(index)[0]
            label = (str(index), str(first), f"{first / fps:.1f}" if first else "0")[row]
            parts.append(_text(_LEFT + index * (_BAR + _GAP) + _BAR / 2, y, label))
    return parts


def legend_html() -> str:
    """What the colours and heights mean."""
    swatch = 'display:inline-block;width:12px;height:10px;border-radius:2px;margin:0 4px 0 10px;vertical-align:middle'
    ramp = f"linear-gradient(90deg, {_conditioned_color(0)}, {_conditioned_color(1)})"
    return (
        '<div class="pusa-schedule-legend" style="font-size:0.85em;margin-top:2px">'
        f'<span style="{swatch};background:{_FREE_COLOR}"></span>generated from noise'
        f'<span style="{swatch};background:{ramp};width:28px"></span>your input: kept exactly (0) to nearly free (1)'
        "</div>"
    )


def _bars(table: Sequence[float], conditioned: set[int], fps: float) -> str:
    count = len(table)
    width = _LEFT + count * (_BAR + _GAP)
    height = _HEIGHT + 6 + len(AXES) * _ROW
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" style="max-width:{width * 2}px;max-height:220px" role="img" '
        f'aria-label="noise multiplier per latent frame">'
    ]
    parts += _axes(count, fps)
    for index, multiplier in enumerate(table):
        x = _LEFT + index * (_BAR + _GAP)
        height = max(2.0, multiplier * _HEIGHT)  # a kept-exactly frame still gets a visible sliver
        color = _conditioned_color(multiplier) if index in conditioned else _FREE_COLOR
        start, end = latent_to_seconds(index, fps)
        state = f"conditioned, starts at {multiplier:g} x noise" if index in conditioned else "generated from noise"
        tip = f"latent {index} · {_pixel_frames_text(index)} · {start:.2f}–{end:.2f} s · {state}"
        parts.append(
            f'<rect x="{x}" y="{_HEIGHT - height:.1f}" width="{_BAR}" height="{height:.1f}" fill="{color}" rx="2">'
            f"<title>{escape(tip)}</title></rect>"
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
        return error_html(err)
    count = latent_frame_count(frames)
    summary = (
        f"{frames} frames = {count} latent frames at {fps:g} fps ({frames / fps:.2f} s). "
        f"{len(parsed_positions)} conditioned; bar height = noise each frame starts from (1 = free)."
    )
    return (
        '<div class="pusa-schedule">'
        f'<div style="font-size:0.9em;margin-bottom:4px">{escape(summary)}</div>'
        f"{_bars(table, set(parsed_positions), fps)}{legend_html()}"
        f"{_table(parsed_positions, parsed_multipliers, fps, sources)}</div>"
    )
