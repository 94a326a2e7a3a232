"""Peak memory of fitting uploads to a job's size, and the cost of long settings in an MP4.

    python benchmarks/media_memory.py [--old-crop]

Each case runs in a fresh process and prints the peak bytes numpy/OpenCV arrays held (tracemalloc) and the
growth of the process's peak RSS. ``--old-crop`` adds the old order for the 1x2000 strip (resize the whole
image, then crop): it needs about 4.2 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pusa_core.media import fit_frame, load_image, read_settings, read_video, write_mp4  # noqa: E402

JOB = (832, 480)
SMALL_JOB = (64, 64)
CLIP_FRAMES = 81


def _resize_then_crop(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = max(width / w, height / h)
    resized = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return resized[top : top + height, left : left + width]


def _case(name: str, folder: Path) -> None:
    """Run one case in this process and print its peaks."""
    strip, clip = folder / "strip.png", folder / "clip_1080p.mp4"
    runs = {
        "strip: load + fit 832x480 crop": lambda: fit_frame(load_image(strip), *JOB, "crop"),
        "strip: load + fit 832x480 pad": lambda: fit_frame(load_image(strip), *JOB, "pad"),
        "strip: old resize-then-crop": lambda: _resize_then_crop(load_image(strip), *JOB),
        "1080p clip: fit each frame as read (64x64)": lambda: read_video(clip, CLIP_FRAMES, size=SMALL_JOB)[0],
        "1080p clip: read all, then fit (64x64)": lambda: np.stack(
            [fit_frame(f, *SMALL_JOB, "crop") for f in read_video(clip, CLIP_FRAMES)[0]]
        ),
    }
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    out = runs[name]()
    peak = tracemalloc.get_traced_memory()[1]
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    print(f"{name:46s} out {list(out.shape)!s:18s} array peak {peak / 1e6:9.1f} MB   peak-RSS growth {rss / 1e6:9.1f} MB")


def _settings_case(folder: Path) -> None:
    prompt = ("a = b; #c \\ d\n é 中文 🎬 " * 10_000)[:200_000]
    settings = {"prompt": prompt, "seed": 1}
    t0 = time.perf_counter()
    path = write_mp4(np.zeros((9, 64, 64, 3), np.uint8), folder / "long.mp4", 16, settings)
    t1 = time.perf_counter()
    assert read_settings(path) == settings
    t2 = time.perf_counter()
    size = len(json.dumps(settings))
    print(f"200,000-char prompt ({size / 1e3:.0f} kB of JSON): write_mp4 {t1 - t0:.2f} s, read_settings {t2 - t1:.2f} s, round trip exact")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-crop", action="store_true", help="also run the old resize-then-crop (about 4.2 GB)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        _case(args.case, args.folder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        Image.fromarray(np.full((2000, 1, 3), 200, np.uint8)).save(folder / "strip.png")
        frames = np.zeros((CLIP_FRAMES, 1080, 1920, 3), np.uint8)
        for t in range(CLIP_FRAMES):
            frames[t, 500:580, 20 * t : 20 * t + 80] = 255
        write_mp4(frames, folder / "clip_1080p.mp4", 16)
        del frames
        print(f"inputs: 1x2000 PNG {(folder / 'strip.png').stat().st_size} B, "
              f"1080p {CLIP_FRAMES}-frame clip {(folder / 'clip_1080p.mp4').stat().st_size / 1e3:.0f} kB")
        cases = [
            "strip: load + fit 832x480 crop", "strip: load + fit 832x480 pad",
            "1080p clip: fit each frame as read (64x64)", "1080p clip: read all, then fit (64x64)",
        ]
        if args.old_crop:
            cases.insert(2, "strip: old resize-then-crop")
        for case in cases:
            subprocess.run([sys.executable, __file__, "--case", case, "--folder", str(folder)], check=True)
        _settings_case(folder)


if __name__ == "__main__":
    main()
