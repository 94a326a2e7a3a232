"""Media: fitting without stretching, reading images/videos, MP4 output with settings inside."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pusa_core.errors import PusaInputError
from pusa_core.media import fit_frame, load_image, read_settings, read_video, video_info, write_mp4


def _two_halves(w=200, h=100):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (255, 0, 0)
    img[:, w // 2 :] = (0, 0, 255)
    return img


def test_crop_fills_and_keeps_the_center():
    out = fit_frame(_two_halves(), 64, 64, "crop")
    assert out.shape == (64, 64, 3)
    assert out[:, :30, 0].mean() > 200 and out[:, 34:, 2].mean() > 200  # both halves, centred, no bars


def test_pad_keeps_everything_and_adds_bars():
    out = fit_frame(_two_halves(), 64, 64, "pad")
    assert out.shape == (64, 64, 3)
    assert out[:14].max() == 0 and out[-14:].max() == 0  # 200x100 -> 64x32 with 16-row bars
    assert out[20:44, :30, 0].mean() > 200 and out[20:44, 34:, 2].mean() > 200


def test_load_image_variants(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_two_halves()).convert("RGBA").save(path)
    assert load_image(path).shape == (100, 200, 3)
    assert load_image(np.zeros((4, 4), np.uint8)).shape == (4, 4, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(PusaInputError, match="image: 'bad.png' is not a readable image"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(PusaInputError, match="images\\[2\\]: file 'gone.png' was not found"):
        load_image(tmp_path / "gone.png", field="images[2]")


def test_mp4_roundtrip_with_settings(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (9, 48, 64, 3), dtype=np.uint8)
    settings = {"prompt": 'a=b; #c "d" \\ e', "seed": 3}
    path = write_mp4(frames, tmp_path / "out.mp4", 16, settings)
    assert video_info(path) == (9, 64, 48)
    assert read_settings(path) == settings
    decoded, fps = read_video(path)
    assert decoded.shape == (9, 48, 64, 3) and fps == 16
    assert read_video(path, max_frames=5)[0].shape[0] == 5


def test_unreadable_video_and_foreign_mp4(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"garbage")
    with pytest.raises(PusaInputError, match="video: 'v.mp4'"):
        read_video(tmp_path / "v.mp4")
    plain = write_mp4(np.zeros((5, 16, 16, 3), np.uint8), tmp_path / "plain.mp4", 8)
    with pytest.raises(PusaInputError, match="carries no Pusa Studio settings"):
        read_settings(plain)
