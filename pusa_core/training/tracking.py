"""Find the coloured object in generated frames and measure its path.

The object's colour is known from the clip's parameters and is far from every background colour,
so a per-pixel nearest-colour test gives its mask; connected components tell whether it split.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .data import BACKGROUND_COLOURS, OBJECT_COLOURS, TEXTURE_CONTRAST

MAX_COLOUR_DISTANCE = 90.0  # RGB distance to the object colour that still counts as object
MIN_COMPONENT_PIXELS = 6  # specks smaller than this are decoding noise, not a second object


@dataclass(frozen=True)
class Track:
    positions: np.ndarray  # [T, 2] centroid (x, y); NaN where the object was not found
    areas: np.ndarray  # [T] object pixels
    components: np.ndarray  # [T] blobs of at least MIN_COMPONENT_PIXELS


def object_mask(frame: np.ndarray, colour: str, background: str) -> np.ndarray:
    """Boolean ``[H, W]``: pixels nearer the object colour than any shade of the background, and near enough."""
    pixels = frame.astype(np.float32)
    target = np.array(OBJECT_COLOURS[colour], dtype=np.float32)
    to_object = np.linalg.norm(pixels - target, axis=-1)
    base = np.array(BACKGROUND_COLOURS[background], dtype=np.float32)
    shades = [np.clip(base + d, 0, 255) for d in (-TEXTURE_CONTRAST, 0, TEXTURE_CONTRAST)]
    to_background = np.min([np.linalg.norm(pixels - s, axis=-1) for s in shades], axis=0)
    return (to_object < MAX_COLOUR_DISTANCE) & (to_object < to_background)


def track(frames: np.ndarray, colour: str, background: str) -> Track:
    """Track the object through uint8 frames ``[T, H, W, 3]``."""
    positions = np.full((len(frames), 2), np.nan)
    areas = np.zeros(len(frames))
    components = np.zeros(len(frames), dtype=np.int64)
    for i, frame in enumerate(frames):
        mask = object_mask(frame, colour, background)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        components[i] = int(np.sum(stats[1:, cv2.CC_STAT_AREA] >= MIN_COMPONENT_PIXELS))
        areas[i] = mask.sum()
        if areas[i] >= MIN_COMPONENT_PIXELS:
            ys, xs = np.nonzero(mask)
            positions[i] = (xs.mean(), ys.mean())
    return Track(positions, areas, components)


def intact(track_: Track, reference_area: float, tolerance: float = 0.5) -> np.ndarray:
    """Per frame: found as exactly one blob whose area is within ``tolerance`` (relative) of ``reference_area``."""
    ratio = track_.areas / max(reference_area, 1.0)
    return (track_.components == 1) & (np.abs(ratio - 1) <= tolerance)


def linear_fit_rms(values: np.ndarray) -> float:
    """RMS residual (pixels) of a constant-velocity fit to positions ``[T, 2]``."""
    t = np.arange(len(values), dtype=np.float64)
    design = np.stack([np.ones_like(t), t], axis=1)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return float(np.sqrt(np.mean((design @ coef - values) ** 2)))


def bounce_fit_rms(values: np.ndarray) -> float:
    """RMS residual of the best two-segment constant-velocity fit (one bounce), over every break frame."""
    best = linear_fit_rms(values)
    for split in range(2, len(values) - 2):
        left, right = values[: split + 1], values[split:]
        sq = linear_fit_rms(left) ** 2 * len(left) + linear_fit_rms(right) ** 2 * len(right)
        best = min(best, float(np.sqrt(sq / (len(left) + len(right)))))
    return best


def velocity(values: np.ndarray) -> np.ndarray:
    """Least-squares velocity (pixels per frame) of positions ``[T, 2]``."""
    t = np.arange(len(values), dtype=np.float64)
    t = t - t.mean()
    return (t[:, None] * (values - values.mean(0))).sum(0) / (t**2).sum()
