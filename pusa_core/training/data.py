"""Procedural training videos: one coloured shape moving (and maybe bouncing) on a plain or textured background.

Every clip is a pure function of its seed, so the training set, the held-out set and the tests all
regenerate the same pixels anywhere. The caption is written from the clip's parameters, which are
kept (with the exact per-frame positions) so the evaluation can track the object and check it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..facts import is_frame_count

# Bright object colours against darker backgrounds keep the object separable by colour for tracking.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (60, 220, 70),
    "blue": (70, 110, 255),
    "yellow": (245, 225, 40),
    "white": (245, 245, 245),
    "purple": (180, 70, 230),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "gray": (105, 105, 105),
    "blue": (25, 40, 110),
    "green": (30, 90, 40),
    "brown": (100, 65, 35),
}
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("plain", "striped", "checkered")
DIRECTIONS: dict[str, tuple[float, float]] = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
CAPTION_WORDS = ("a", "moves", "and", "bounces", "back", "on", "background")
# Captions the app offers as examples for a model trained on these clips (one of each texture and motion).
EXAMPLE_PROMPTS = (
    "a red circle moves right on a blue background",
    "a yellow square moves down and bounces back on a gray background",
    "a white triangle moves left on a striped green background",
    "a purple circle moves up on a checkered brown background",
)

SIZE = 64
FRAMES = 17
RADIUS_RANGE = (7.0, 10.0)
SPEED_RANGE = (1.0, 2.2)  # pixels per frame; not in the caption, so extension must read it from the frames
TEXTURE_PERIOD = 16
TEXTURE_CONTRAST = 22


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines a clip."""

    shape: str
    colour: str
    background: str
    texture: str
    direction: str
    bounces: bool
    radius: float
    start: tuple[float, float]  # (x, y) centre at frame 0, pixels
    speed: float


@dataclass(frozen=True)
class Clip:
    pixels: torch.Tensor  # [3, T, H, W] in [-1, 1]
    caption: str
    spec: ClipSpec
    positions: np.ndarray  # [T, 2] object centre (x, y) per frame
    mask: torch.Tensor  # [1, T, H, W] 1.0 where a pixel differs from the background (the object and its edge)


def caption(spec: ClipSpec) -> str:
    """"a red circle moves right [and bounces back] on a [striped] blue background"."""
    motion = f"moves {spec.direction}" + (" and bounces back" if spec.bounces else "")
    texture = "" if spec.texture == "plain" else f"{spec.texture} "
    return f"a {spec.colour} {spec.shape} {motion} on a {texture}{spec.background} background"


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order (the tokenizer's vocabulary)."""
    words = list(CAPTION_WORDS) + list(OBJECT_COLOURS) + list(BACKGROUND_COLOURS) + list(SHAPES)
    words += [t for t in TEXTURES if t != "plain"] + list(DIRECTIONS)
    return list(dict.fromkeys(words))


def trajectory(spec: ClipSpec, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """Centre ``[frames, 2]``: constant velocity, reflected off the wall it runs into when it bounces."""
    dx, dy = DIRECTIONS[spec.direction]
    t = np.arange(frames, dtype=np.float64)
    pos = np.asarray(spec.start, dtype=np.float64)[None, :] + spec.speed * t[:, None] * np.array([dx, dy])[None, :]
    low, high = spec.radius, size - 1 - spec.radius
    # Reflecting at [low, high] folds the straight path back into the box.
    span = high - low
    folded = np.mod(pos - low, 2 * span)
    return np.where(folded > span, 2 * span - folded, folded) + low


def random_spec(rng: np.random.Generator, frames: int = FRAMES, size: int = SIZE) -> ClipSpec:
    """Draw a clip: straight clips stay inside the frame; bouncing clips hit the wall between frames 4 and 12."""
    colour = str(rng.choice(list(OBJECT_COLOURS)))
    background = str(rng.choice([b for b in BACKGROUND_COLOURS if b != colour]))
    direction = str(rng.choice(list(DIRECTIONS)))
    bounces = bool(rng.random() < 0.3)
    radius = float(rng.uniform(*RADIUS_RANGE))
    speed = float(rng.uniform(*SPEED_RANGE))
    low, high = radius + 1, size - 2 - radius
    travel = speed * (frames - 1)
    if bounces:
        hit = rng.uniform(0.25, 0.75) * (frames - 1)
        along = high - speed * hit  # distance to the far wall covered by frame `hit`
    else:
        along = rng.uniform(low, max(low, high - travel))
    across = rng.uniform(low, high)
    dx, dy = DIRECTIONS[direction]
    # `along` is measured in the direction of motion; mirror it for left/up.
    if dx:
        start = (along if dx > 0 else size - 1 - along, across)
    else:
        start = (across, along if dy > 0 else size - 1 - along)
    return ClipSpec(
        shape=str(rng.choice(SHAPES)),
        colour=colour,
        background=background,
        texture=str(rng.choice(TEXTURES, p=[0.7, 0.15, 0.15])),
        direction=direction,
        bounces=bounces,
        radius=radius,
        start=(float(start[0]), float(start[1])),
        speed=speed,
    )


def background(spec: ClipSpec, size: int = SIZE) -> np.ndarray:
    """``[H, W, 3]`` uint8: the plain colour, or low-contrast coarse stripes/checks of it."""
    base = np.array(BACKGROUND_COLOURS[spec.background], dtype=np.int16)
    yy, xx = np.mgrid[0:size, 0:size]
    if spec.texture == "striped":
        pattern = (yy // (TEXTURE_PERIOD // 2)) % 2
    elif spec.texture == "checkered":
        pattern = ((yy // (TEXTURE_PERIOD // 2)) + (xx // (TEXTURE_PERIOD // 2))) % 2
    else:
        pattern = np.zeros((size, size), dtype=np.int64)
    img = base[None, None, :] + (pattern[..., None] * 2 - 1) * (TEXTURE_CONTRAST if spec.texture != "plain" else 0)
    return np.clip(img, 0, 255).astype(np.uint8)


_SUBPIXEL = 4  # cv2 fixed-point bits: positions are drawn to 1/16 pixel so slow motion stays smooth


def draw_shape(canvas: np.ndarray, shape: str, centre: tuple[float, float], radius: float, rgb: tuple[int, int, int]) -> None:
    """Draw a filled anti-aliased shape in place; square and triangle have the circle's radius as half-size."""
    scale = 1 << _SUBPIXEL
    cx, cy = centre[0] * scale, centre[1] * scale
    r = radius * scale
    colour = tuple(int(c) for c in rgb)
    if shape == "circle":
        cv2.circle(canvas, (round(cx), round(cy)), round(r), colour, -1, cv2.LINE_AA, _SUBPIXEL)
        return
    if shape == "square":
        half = r * 0.85
        points = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    elif shape == "triangle":
        points = [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    poly = np.round(np.array(points)).astype(np.int32)
    cv2.fillPoly(canvas, [poly], colour, cv2.LINE_AA, _SUBPIXEL)


def render(spec: ClipSpec, positions: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` uint8."""
    bg = background(spec, size)
    frames = np.empty((len(positions), size, size, 3), dtype=np.uint8)
    for i, (x, y) in enumerate(positions):
        frame = bg.copy()
        draw_shape(frame, spec.shape, (float(x), float(y)), spec.radius, OBJECT_COLOURS[spec.colour])
        frames[i] = frame
    return frames


def to_model_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[3, T, H, W]`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def make_clip(seed: int, frames: int = FRAMES, size: int = SIZE) -> Clip:
    """The clip for ``seed`` (the same pixels on every machine)."""
    if not is_frame_count(frames):
        raise ValueError(f"frames must be 4k+1 (the VAE's temporal compression), got {frames}")
    if size < 32 or size % 16:
        raise ValueError(f"size must be a multiple of 16 and at least 32, got {size}")
    spec = random_spec(np.random.default_rng(seed), frames, size)
    positions = trajectory(spec, frames, size)
    pixels = render(spec, positions, size)
    mask = torch.from_numpy((pixels != background(spec, size)[None]).any(-1)).float()[None]
    return Clip(to_model_pixels(pixels), caption(spec), spec, positions, mask)


def clip_batch(seeds: Sequence[int], frames: int = FRAMES, size: int = SIZE) -> tuple[torch.Tensor, list[str]]:
    """Pixels ``[B, 3, T, H, W]`` and captions for ``seeds``."""
    clips = [make_clip(s, frames, size) for s in seeds]
    return torch.stack([c.pixels for c in clips]), [c.caption for c in clips]
