"""Example inputs for the small model, drawn by the training data generator from the example captions.

The small model knows only the clips it was trained on, so its examples are such clips: each caption
is read back into the clip parameters it names (shape, colours, texture, direction, bounce) and drawn
with :mod:`.data`. Each caption gives a start frame (Image-to-Video), a start and an end frame
(Multi-Frames) and the whole clip as an MP4 (Video-to-Video).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..media import write_mp4
from .data import (
    BACKGROUND_COLOURS,
    DIRECTIONS,
    FRAMES,
    OBJECT_COLOURS,
    RADIUS_RANGE,
    SHAPES,
    SIZE,
    SPEED_RANGE,
    TEXTURES,
    ClipSpec,
    caption,
    render,
    trajectory,
)

_CAPTION = re.compile(
    r"^a (?P<colour>\w+) (?P<shape>\w+) moves (?P<direction>\w+)(?P<bounces> and bounces back)? "
    r"on a (?:(?P<texture>striped|checkered) )?(?P<background>\w+) background$"
)
RADIUS = sum(RADIUS_RANGE) / 2
SPEED = sum(SPEED_RANGE) / 2


def known_words() -> dict[str, list[str]]:
    """The words of the training captions, by what they say."""
    return {
        "shapes": list(SHAPES),
        "colours": list(OBJECT_COLOURS),
        "backgrounds": list(BACKGROUND_COLOURS),
        "textures": [t for t in TEXTURES if t != "plain"],
        "motions": [f"moves {d}" for d in DIRECTIONS] + ["and bounces back"],
    }


def spec_from_caption(text: str, frames: int = FRAMES, size: int = SIZE) -> ClipSpec:
    """The clip a training caption describes; the object starts where its whole path stays in view."""
    match = _CAPTION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a training caption like {caption(_example_spec())!r}")
    parts = match.groupdict()
    for key, allowed in (("colour", OBJECT_COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS),
                         ("background", BACKGROUND_COLOURS)):
        if parts[key] not in allowed:
            raise ValueError(f"{text!r}: {parts[key]!r} is not a {key} the small model knows ({', '.join(allowed)})")
    bounces = parts["bounces"] is not None
    low, high = RADIUS + 1, size - 2 - RADIUS
    # Bouncing clips hit the far wall mid-clip; straight ones are centred on their path.
    along = high - SPEED * (frames - 1) / 2 if bounces else (size - 1 - SPEED * (frames - 1)) / 2
    along = min(max(along, low), high)
    dx, dy = DIRECTIONS[parts["direction"]]
    across = (size - 1) / 2
    if dx:
        start = (along if dx > 0 else size - 1 - along, across)
    else:
        start = (across, along if dy > 0 else size - 1 - along)
    return ClipSpec(
        shape=parts["shape"], colour=parts["colour"], background=parts["background"], texture=parts["texture"] or "plain",
        direction=parts["direction"], bounces=bounces, radius=RADIUS, start=start, speed=SPEED,
    )


def _example_spec() -> ClipSpec:
    return ClipSpec("circle", "red", "blue", "plain", "right", False, RADIUS, (10.0, 32.0), SPEED)


def example_frames(text: str, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """The clip of a training caption, ``[T, H, W, 3]`` uint8."""
    spec = spec_from_caption(text, frames, size)
    return render(spec, trajectory(spec, frames, size), size)


@dataclass(frozen=True)
class ExampleMedia:
    """Files drawn for one caption."""

    prompt: str
    start: Path  # frame 0 as PNG
    end: Path  # the last frame as PNG
    clip: Path  # the whole clip as MP4


def write_examples(folder: Path, prompts: list[str] | tuple[str, ...], fps: float, frames: int = FRAMES,
                   size: int = SIZE) -> list[ExampleMedia]:
    """Draw every caption's start frame, end frame and clip into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index, text in enumerate(prompts):
        start, end, clip = folder / f"small_{index}_start.png", folder / f"small_{index}_end.png", folder / f"small_{index}.mp4"
        pixels = example_frames(text, frames, size)
        cv2.imwrite(str(start), cv2.cvtColor(pixels[0], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(end), cv2.cvtColor(pixels[-1], cv2.COLOR_RGB2BGR))
        write_mp4(pixels, clip, fps)
        out.append(ExampleMedia(text, start, end, clip))
    return out
