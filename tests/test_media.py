"""Media: fitting without stretching, reading images/videos, MP4 output with settings inside."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import tracemalloc
import zlib

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from pusa_core import media
from pusa_core.errors import PusaInputError
from pusa_core.facts import MAX_SETTINGS_BYTES
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


# -- bounded memory and sizes --------------------------------------------------------------------------
def _photo_like(h=427, w=640):
    """Smooth shapes plus blurred noise: the kind of content fit_frame's two orders must agree on."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 60 * np.sin(x / 37 + c) + 50 * np.cos(y / 23 - c) for c in range(3)], axis=-1)
    noise = cv2.GaussianBlur(np.random.default_rng(0).normal(0, 40, (h, w, 3)), (0, 0), 3)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _resize_then_crop(frame, width, height):
    """fit_frame's crop as it was: resize the whole image to cover the target, then trim the center."""
    h, w = frame.shape[:2]
    scale = max(width / w, height / h)
    new_w, new_h = round(w * scale), round(h * scale)
    resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[top : top + height, left : left + width]


@pytest.mark.parametrize("size", [(832, 480), (480, 832), (64, 64), (320, 192), (1280, 720)])
def test_crop_in_source_coordinates_matches_resize_then_crop(size):
    photo = _photo_like()
    out = fit_frame(photo, *size, "crop")
    assert out.shape == (size[1], size[0], 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - _resize_then_crop(photo, *size)).mean() < 1.0


def _peak_bytes(run):
    """Peak bytes numpy and OpenCV's outputs held while ``run`` ran (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_thin_strip_is_fitted_without_a_huge_intermediate(tmp_path):
    """A 94-byte 1x2000 PNG used to become an 832x1,664,000 image (4 GB) before the crop."""
    path = tmp_path / "strip.png"
    Image.fromarray(np.full((2000, 1, 3), 200, np.uint8)).save(path)
    out, peak = _peak_bytes(lambda: fit_frame(load_image(path), 832, 480, "crop"))
    assert out.shape == (480, 832, 3) and (out == 200).all()
    assert peak < 4 * out.nbytes
    padded, peak = _peak_bytes(lambda: fit_frame(load_image(path), 832, 480, "pad"))
    assert padded.shape == (480, 832, 3) and peak < 4 * padded.nbytes
    assert (padded[:, 415] == 200).all() and padded[:, :415].max() == 0 and padded[:, 416:].max() == 0  # a 1-pixel column


def _png_header(path, width, height):
    """A PNG that claims ``width`` x ``height`` in a few dozen bytes, as a decompression bomb does."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


LIMIT = "the limit is 40 MP and 16384 pixels a side; downscale it"


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("size", "says"),
    [
        ((8000, 5001), "is 8000x5001 (40.01 MP)"),  # just over our limit
        ((10000, 10000), "is 10000x10000 (100 MP)"),  # Pillow warns from 89.5 MP
        ((20000, 20000), "is over 178.96 MP"),  # Pillow refuses past 179 MP before the size can be read
    ],
)
def test_oversized_image_is_refused_from_its_header(tmp_path, size, says):
    path = _png_header(tmp_path / "huge.png", *size)
    with pytest.raises(PusaInputError) as err:
        load_image(path, field="images[1]")
    assert str(err.value) == f"images[1]: 'huge.png' {says}; {LIMIT}"
    assert str(tmp_path) not in str(err.value)


def test_image_with_a_side_over_the_limit_is_refused(tmp_path):
    path = tmp_path / "ribbon.png"
    Image.new("RGB", (20000, 1)).save(path)
    with pytest.raises(PusaInputError, match=re.escape(f"image: 'ribbon.png' is 20000x1 (0.02 MP); {LIMIT}")):
        load_image(path)


def test_text_renamed_png_names_only_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not a picture\n")
    with pytest.raises(PusaInputError) as err:
        load_image(str(path))
    assert str(err.value) == "image: 'notes.png' is not a readable image; use a PNG, JPEG or WebP file"


def _moving_square(t, h, w):
    frames = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, h // 3 : h // 2, 40 * i : 40 * i + h // 6] = (230, 60, 20)
    return frames


def test_video_frames_are_fitted_as_they_are_read(tmp_path):
    """A 720p clip read for a 64x48 job holds about one source frame at a time, not the whole clip."""
    path = write_mp4(_moving_square(17, 720, 1280), tmp_path / "hd.mp4", 12)
    full, _ = read_video(path)
    (fitted, fps), peak = _peak_bytes(lambda: read_video(path, max_frames=13, size=(64, 48), fit="pad"))
    assert fitted.shape == (13, 48, 64, 3) and fps == 12
    assert np.array_equal(fitted, np.stack([fit_frame(f, 64, 48, "pad") for f in full[:13]]))
    assert peak < 3 * full[0].nbytes  # the clip was 13 source frames before


def test_video_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.avi"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=6400x6400",
               "-frames:v", "1", "-c:v", "mjpeg", str(path)]
    subprocess.run(command, check=True)
    with pytest.raises(PusaInputError) as err:
        read_video(path, size=(64, 64))
    assert str(err.value) == f"video: 'huge.avi' is 6400x6400 (40.96 MP) per frame; {LIMIT}"


# -- settings written through a metadata file, read back within bounds ------------------------------------
def test_settings_with_a_huge_prompt_round_trip_through_the_mp4(tmp_path):
    """A 200,000-character prompt used to pass the 128 KiB limit on one argv string and fail the write."""
    prompt = ("a = b; #c \\ d\n\"quoted\"\r\ttab é 中文 🎬 " * 8000)[:200_000]
    settings = {"prompt": prompt, "negative_prompt": "=;#\\\n", "seed": 7, "nested": {"k=v": [1.5, None, True]}}
    path = write_mp4(np.zeros((3, 16, 16, 3), np.uint8), tmp_path / "long.mp4", 8, settings)
    assert len(prompt) == 200_000
    assert read_settings(path) == settings
    assert video_info(path) == (3, 16, 16)


def test_settings_over_the_size_cap_are_refused(tmp_path):
    big = {"prompt": "x" * MAX_SETTINGS_BYTES}
    video = write_mp4(np.zeros((1, 16, 16, 3), np.uint8), tmp_path / "big.mp4", 8, big)
    (tmp_path / "big.json").write_text(json.dumps(big))
    for name in ("big.mp4", "big.json"):
        with pytest.raises(PusaInputError) as err:
            read_settings(tmp_path / name)
        assert str(err.value) == f"settings file: '{name}' holds more than 4 MB of settings; use a video or JSON this app made"
    assert video.stat().st_size > MAX_SETTINGS_BYTES


def test_reading_settings_gives_up_after_the_time_limit(tmp_path, monkeypatch):
    video = write_mp4(np.zeros((1, 16, 16, 3), np.uint8), tmp_path / "slow.mp4", 8, {"seed": 1})
    monkeypatch.setattr(media, "SETTINGS_READ_SECONDS", 1e-4)  # no ffmpeg starts, reads and exits in 0.1 ms
    with pytest.raises(PusaInputError) as err:
        read_settings(video)
    assert str(err.value) == "settings file: reading 'slow.mp4' took over 0.0001 s; use a video or JSON this app made"


def test_bad_settings_files_name_only_the_file(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PusaInputError, match=r"^settings file: 'deep.json' is not a settings JSON file \(maximum recursion"):
        read_settings(tmp_path / "deep.json")
    (tmp_path / "latin1.json").write_bytes(b'{"prompt": "caf\xe9"}')
    with pytest.raises(PusaInputError, match=r"^settings file: 'latin1.json' is not a settings JSON file \('utf-8' codec"):
        read_settings(tmp_path / "latin1.json")
    with pytest.raises(PusaInputError) as err:
        read_settings(tmp_path / "gone.json")
    assert str(err.value) == "settings file: file 'gone.json' was not found; upload it again"
