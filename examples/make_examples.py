"""Draw the example inputs the app offers (``python examples/make_examples.py`` rewrites them).

Small, synthetic and deterministic: a sunset image for Image-to-Video, start and end keyframes of a
rolling ball for Multi-Frames, and an 81-frame clip of a moving square for Video-to-Video.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))  # run as a script from anywhere

from pusa_core.media import write_mp4  # noqa: E402

WIDTH, HEIGHT = 416, 240  # Wan's 832x480 shape at half size
CLIP_FRAMES, CLIP_FPS = 81, 16


def vertical_gradient(top: tuple[int, int, int], bottom: tuple[int, int, int], height: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    row = (1 - t) * np.array(top) + t * np.array(bottom)
    return np.repeat(row, WIDTH, axis=1).astype(np.uint8)


def sunset() -> Image.Image:
    horizon = int(HEIGHT * 0.62)
    sky = vertical_gradient((40, 30, 110), (250, 140, 60), horizon)
    sea = vertical_gradient((200, 90, 50), (20, 30, 80), HEIGHT - horizon)
    image = Image.fromarray(np.concatenate([sky, sea]))
    draw = ImageDraw.Draw(image)
    cx, cy, r = WIDTH // 2, horizon - 18, 34
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 210, 90))
    for i, y in enumerate(range(horizon + 6, HEIGHT, 12)):
        half = 60 - i * 5
        draw.line((cx - half, y, cx + half, y), fill=(255, 190, 90), width=2)
    return image


def field_with_ball(x: int) -> Image.Image:
    sky = vertical_gradient((120, 180, 240), (200, 225, 250), HEIGHT // 2)
    grass = vertical_gradient((70, 160, 60), (30, 100, 30), HEIGHT - HEIGHT // 2)
    image = Image.fromarray(np.concatenate([sky, grass]))
    draw = ImageDraw.Draw(image)
    y, r = int(HEIGHT * 0.68), 26
    draw.ellipse((x - r, y + r - 6, x + r, y + r + 6), fill=(25, 70, 25))  # shadow
    draw.ellipse((x - r, y - r, x + r, y + r), fill=(220, 30, 30), outline=(120, 10, 10), width=2)
    return image


def moving_square_clip() -> np.ndarray:
    frames = []
    side = 48
    for i in range(CLIP_FRAMES):
        image = Image.new("RGB", (WIDTH, HEIGHT), (245, 245, 240))
        draw = ImageDraw.Draw(image)
        x = 20 + (WIDTH - side - 40) * i / (CLIP_FRAMES - 1)
        y = HEIGHT / 2 - side / 2 + 40 * np.sin(i / CLIP_FRAMES * 2 * np.pi)
        draw.rectangle((x, y, x + side, y + side), fill=(40, 90, 220))
        frames.append(np.asarray(image))
    return np.stack(frames)


def main() -> None:
    sunset().save(ROOT / "sunset.png")
    field_with_ball(60).save(ROOT / "ball_start.png")
    field_with_ball(WIDTH - 60).save(ROOT / "ball_end.png")
    write_mp4(moving_square_clip(), ROOT / "square.mp4", CLIP_FPS)


if __name__ == "__main__":
    main()
