"""Read images and videos, fit them to the target size without stretching, write browser-ready MP4s."""

from __future__ import annotations

import collections
import itertools
import json
import math
import re
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import PusaInputError
from .facts import MAX_INPUT_PIXELS, MAX_INPUT_SIDE, MAX_SETTINGS_BYTES, SETTINGS_READ_SECONDS
from .requests import Fit, ImageInput

SETTINGS_TAG = "pusa_settings"
SETTINGS_FIELD = "settings file"
FPS_TOLERANCE = 0.01  # frame rates closer than this are the same (containers store 16 as 15.99...)
# Frames decoded from one video at most: an hour at 60 fps. Taking the last frames decodes the whole file,
# so a small upload of millions of tiny frames must not hold the queue for long.
MAX_VIDEO_FRAMES = 216_000


def _megapixels(pixels: int) -> str:
    return f"{round(pixels / 1e6, 2):g} MP"


def _too_large(field: str, name: str, what: str) -> PusaInputError:
    limit = f"{_megapixels(MAX_INPUT_PIXELS)} and {MAX_INPUT_SIDE} pixels a side"
    return PusaInputError(field, f"{name!r} is {what}; the limit is {limit}; downscale it")


def _check_dimensions(field: str, name: str, width: int, height: int, what: str = "") -> None:
    """Refuse a picture too large to decode, from its header, before any pixel is read."""
    if width * height > MAX_INPUT_PIXELS or max(width, height) > MAX_INPUT_SIDE:
        raise _too_large(field, name, f"{width}x{height} ({_megapixels(width * height)}){what}")


def load_image(source: ImageInput, field: str = "image") -> np.ndarray:
    """Any image input -> RGB uint8 ``[H, W, 3]``."""
    if isinstance(source, np.ndarray):
        array = source
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise PusaInputError(field, f"array of shape {list(source.shape)} is not an RGB image")
        return np.ascontiguousarray(array[..., :3].astype(np.uint8))
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"))
    path = Path(source)
    if not path.is_file():
        raise PusaInputError(field, f"file {path.name!r} was not found; upload the image again")
    try:
        # Pillow warns about (and past twice its limit refuses) huge images at open and in some decoders;
        # our limit is lower, so its warning is silenced here and the size is answered in our words.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_dimensions(field, path.name, *img.size)  # from the header: open() reads no pixels
                return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError:
        raise _too_large(field, path.name, f"over {_megapixels(2 * (Image.MAX_IMAGE_PIXELS or 0))}") from None
    except (UnidentifiedImageError, OSError):
        raise PusaInputError(field, f"{path.name!r} is not a readable image; use a PNG, JPEG or WebP file") from None


def fit_frame(frame: np.ndarray, width: int, height: int, fit: Fit) -> np.ndarray:
    """Resize keeping the aspect ratio: ``crop`` covers the target and trims the center, ``pad`` fits and adds black bars.

    ``crop`` cuts the source to the target's aspect ratio before resizing, so only kept pixels are resized and
    memory stays at the target's size whatever the source's shape (a 1x2000 strip no longer becomes 832x1.6M).
    """
    h, w = frame.shape[:2]
    if fit == "crop":
        crop_w = min(w, max(1, round(h * width / height)))
        crop_h = min(h, max(1, round(w * height / width)))
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        return _resize(frame[top : top + crop_h, left : left + crop_w], width, height)
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = _resize(frame, new_w, new_h)
    return canvas


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = width * height < frame.shape[0] * frame.shape[1]
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def resampled_index(i: int, source_fps: float, fps: float) -> int:
    """The source frame on screen at output frame ``i``'s time: the one whose span holds ``i / fps``."""
    return math.floor(i * source_fps / fps + 1e-9)


def resampled_count(source_frames: int, source_fps: float, fps: float) -> int:
    """Output frames at ``fps`` that a clip of ``source_frames`` at ``source_fps`` lasts (at least 1)."""
    return max(1, math.ceil(source_frames * fps / source_fps - 1e-9))


def _resample(frames: Iterator[np.ndarray], source_fps: float, fps: float) -> Iterator[np.ndarray]:
    """Frames at ``fps`` from frames at ``source_fps``, streamed: each source frame is shown for as long as it lasts."""
    i = 0
    for k, frame in enumerate(frames):
        while resampled_index(i, source_fps, fps) == k:
            yield frame
            i += 1


def iter_video(
    path: str | Path, field: str = "video", size: tuple[int, int] | None = None, fit: Fit = "crop", fps: float | None = None,
) -> tuple[Iterator[np.ndarray], float]:
    """A video's RGB uint8 frames one at a time, and the file's frame rate; see :func:`read_video`.

    The file is checked (readable, not too large) before this returns; frames are decoded as they are taken.
    """
    path = Path(path)
    if not path.is_file():
        raise PusaInputError(field, f"file {path.name!r} was not found; upload the video again")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise PusaInputError(field, f"{path.name!r} is not a readable video; use an MP4, MOV or WebM file")
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        _check_dimensions(field, path.name, width, height, " per frame")
    except PusaInputError:
        capture.release()
        raise
    source_fps = float(capture.get(cv2.CAP_PROP_FPS) or 16.0)

    def frames() -> Iterator[np.ndarray]:
        try:
            for _ in range(MAX_VIDEO_FRAMES):
                ok, frame = capture.read()
                if not ok:
                    return
                if size is not None:
                    frame = fit_frame(frame, *size, fit)
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if capture.grab():
                raise PusaInputError(field, f"{path.name!r} has more than {MAX_VIDEO_FRAMES:,} frames; cut it shorter")
        finally:
            capture.release()

    stream = frames()
    if fps is not None and abs(source_fps - fps) > FPS_TOLERANCE:
        stream = _resample(stream, source_fps, fps)
    return stream, source_fps


def read_video(
    path: str | Path,
    max_frames: int | None = None,
    field: str = "video",
    size: tuple[int, int] | None = None,
    fit: Fit = "crop",
    fps: float | None = None,
    last: bool = False,
) -> tuple[np.ndarray, float]:
    """Frames as RGB uint8 ``[T, H, W, 3]`` (at most ``max_frames``) and the file's own frame rate.

    With ``size=(width, height)`` each frame is fitted as it is read, so memory grows with the target size,
    not the source's. With ``fps`` a clip at another rate is resampled to it as it is read (a 30 fps clip
    keeps its duration at 16 fps, instead of playing in slow motion). With ``last`` the final ``max_frames``
    are kept instead of the first; the whole clip is decoded, but only that many frames are held.
    """
    stream, source_fps = iter_video(path, field, size, fit, fps)
    if last and max_frames is not None:
        kept = collections.deque(stream, maxlen=max_frames)
    else:
        kept = collections.deque(itertools.islice(stream, max_frames))
    if not kept:
        raise PusaInputError(field, f"{Path(path).name!r} has no frames that could be decoded; re-encode it as H.264 MP4")
    return np.stack(list(kept)), source_fps


def to_model_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[1, 3, T, H, W]`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return x.permute(3, 0, 1, 2).unsqueeze(0)


def from_model_pixels(pixels: torch.Tensor) -> np.ndarray:
    """float ``[1, 3, T, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, 3]``."""
    x = pixels[0].float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def write_mp4(
    frames: np.ndarray | Iterable[np.ndarray], path: str | Path, fps: float, settings: dict[str, Any] | None = None
) -> Path:
    """H.264 yuv420p MP4 that browsers play; ``settings`` go into the file's comment metadata as JSON.

    ``frames``: ``[T, H, W, 3]`` uint8, or any iterable of ``[H, W, 3]`` frames of one size (streamed: a long
    joined video is never held whole).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if settings is None:
        _encode(frames, path, fps, ["-movflags", "+faststart"])
        return path
    # The settings reach ffmpeg through an ffmetadata file, not a -metadata argument: a long prompt would
    # pass the OS's argument size limit. write_frames puts its own codec options before anything added after
    # its "-i -", so a second input cannot join that command: the frames are encoded first, then copied with
    # the metadata file as input 1.
    with tempfile.TemporaryDirectory(prefix="pusa-mp4-") as tmp:
        plain, metadata = Path(tmp) / "frames.mp4", Path(tmp) / "settings.ffmeta"
        _encode(frames, plain, fps, [])
        comment = json.dumps({SETTINGS_TAG: settings}, separators=(",", ":"))
        metadata.write_text(f";FFMETADATA1\ncomment={_ffmetadata_escape(comment)}\n", encoding="utf-8")
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(plain), "-i", str(metadata),
            "-map", "0:v", "-map_metadata", "1", "-c", "copy", "-movflags", "+faststart", str(path),
        ]
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg could not add the settings to {path.name} (exit {result.returncode}): {result.stderr.strip()}")
    return path


def _encode(frames: np.ndarray | Iterable[np.ndarray], path: Path, fps: float, output_params: list[str]) -> None:
    stream = iter(frames)
    first = next(stream, None)
    if first is None:
        raise ValueError(f"{path.name}: no frames to write")
    h, w = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=8,
        macro_block_size=2, output_params=output_params, ffmpeg_log_level="error",
    )
    writer.send(None)
    try:
        for frame in itertools.chain([first], stream):
            if frame.shape[:2] != (h, w):
                raise ValueError(f"{path.name}: a {frame.shape[1]}x{frame.shape[0]} frame among {w}x{h} frames")
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _ffmetadata_escape(text: str) -> str:
    """ffmetadata's escaping: a backslash before '=', ';', '#', '\\' and newline."""
    return re.sub(r"([=;#\\\n])", r"\\\1", text)


def _ffmetadata_value(text: str, key: str) -> str | None:
    """The unescaped value of ``key`` in an ffmetadata dump (values may span lines through escaped newlines)."""
    match = re.search(rf"^{re.escape(key)}=((?:\\.|[^\\\n])*)", text, flags=re.MULTILINE | re.DOTALL)
    return None if match is None else re.sub(r"\\(.)", r"\1", match.group(1), flags=re.DOTALL)


def video_info(path: str | Path) -> tuple[int, int, int]:
    """(frames, width, height) of a video file, decoded to count exactly."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    w, h = meta["size"]
    return count, w, h


def read_settings(path: str | Path) -> dict[str, Any]:
    """Settings saved with an output: from its ``.json`` file or from the MP4's metadata.

    The file is an upload: its size, ffmpeg's time on it and the metadata it yields are all bounded.
    """
    path = Path(path)
    if not path.is_file():
        raise PusaInputError(SETTINGS_FIELD, f"file {path.name!r} was not found; upload it again")
    if path.suffix.lower() == ".json":
        if path.stat().st_size > MAX_SETTINGS_BYTES:
            raise _settings_too_large(path.name)
        try:
            return json.loads(path.read_bytes().decode("utf-8"))
        except (ValueError, RecursionError) as err:  # bad UTF-8, bad JSON, or nesting deep enough to blow the stack
            raise PusaInputError(SETTINGS_FIELD, f"{path.name!r} is not a settings JSON file ({err})") from None
    comment = _ffmetadata_value(_metadata_dump(path), "comment")
    try:
        return json.loads(comment or "")[SETTINGS_TAG]
    except (ValueError, RecursionError, KeyError, TypeError):
        raise PusaInputError(
            SETTINGS_FIELD, f"{path.name!r} carries no Pusa Studio settings; use a video or JSON this app made"
        ) from None


def _settings_too_large(name: str) -> PusaInputError:
    limit = f"{MAX_SETTINGS_BYTES // 2**20} MB"
    return PusaInputError(SETTINGS_FIELD, f"{name!r} holds more than {limit} of settings; use a video or JSON this app made")


def _metadata_dump(path: Path) -> str:
    """The MP4's metadata in ffmetadata form, read by ffmpeg into a file so a huge tag cannot fill memory."""
    with tempfile.TemporaryDirectory(prefix="pusa-settings-") as tmp:
        dump = Path(tmp) / "metadata.ffmeta"
        # -f mov: the upload is read as an MP4 whatever it holds, never as a playlist that names other files.
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "mov", "-i", str(path),
            "-f", "ffmetadata", str(dump),
        ]
        try:
            subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=SETTINGS_READ_SECONDS, check=False,
            )
        except subprocess.TimeoutExpired:
            raise PusaInputError(
                SETTINGS_FIELD, f"reading {path.name!r} took over {SETTINGS_READ_SECONDS} s; use a video or JSON this app made"
            ) from None
        if not dump.is_file():
            return ""
        if dump.stat().st_size > MAX_SETTINGS_BYTES:
            raise _settings_too_large(path.name)
        return dump.read_text(encoding="utf-8", errors="replace")
