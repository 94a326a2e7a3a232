"""Continue a video: which of its last frames condition the next part, and the two parts joined into one MP4.

A continuation is a Video-to-Video job on the previous video's last frames, placed at the new video's
first latent slots (Pusa's extension, taken from the end). Wan's VAE is causal in time: slots
``0..k-1`` stand for pixel frames ``0..4(k-1)``, so ``k`` slots take the last ``4(k-1)+1`` frames
(4 slots: the last 13). The new part reproduces those frames at its start; the joined video keeps the
original whole and drops them from the new part: ``joined = original + new - overlap`` frames.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PusaInputError
from .facts import TEMPORAL_COMPRESSION, frames_needed, latent_frame_count
from .media import iter_video, read_video, write_mp4
from .outputs import OutputFolder, sha256_file

# Pusa's extension example: the kept frames exact at the far end, noisier towards the new part.
CONTINUE_MULTIPLIERS: tuple[float, ...] = (0.0, 0.3, 0.4, 0.5)
CONTINUE_SLOTS = len(CONTINUE_MULTIPLIERS)
JOINED_TASK = "continue"  # joined videos are named continue_<time>_seed<seed>.mp4
OUTPUT_FIELD = "output"


@dataclass(frozen=True)
class ContinuationPlan:
    """Which of the original's frames condition the new part, and how many of the new part's frames repeat them."""

    positions: tuple[int, ...]
    multipliers: tuple[float, ...]
    overlap: int  # pixel frames: the original's last ``overlap`` frames = the new part's first ``overlap``

    def joined_frames(self, original_frames: int, new_frames: int) -> int:
        return original_frames + new_frames - self.overlap


def overlap_frames(positions: Sequence[int]) -> int:
    """Pixel frames the latent slots ``positions`` cover from the start of a video (and so repeat in a join)."""
    return frames_needed(positions)


def plan_continuation(
    original_frames: int, new_frames: int, multipliers: Sequence[float] = CONTINUE_MULTIPLIERS
) -> ContinuationPlan:
    """The conditioning for continuing an ``original_frames`` video with a ``new_frames`` part.

    Takes up to ``len(multipliers)`` slots (the last 13 frames for 4), fewer when the original is too short
    to fill them or the new part must keep at least one slot of its own.
    """
    if original_frames < 1:
        raise PusaInputError(OUTPUT_FIELD, "has no frames to continue; choose a finished video")
    by_original = (original_frames - 1) // TEMPORAL_COMPRESSION + 1  # slots whose frames the original has
    by_new = latent_frame_count(new_frames) - 1  # one slot at least is new
    slots = min(len(multipliers), by_original, by_new)
    if slots < 1:
        raise PusaInputError(
            "num_frames", f"{new_frames} frames leave nothing to add after the kept frames; give 5 frames or more"
        )
    positions = tuple(range(slots))
    return ContinuationPlan(positions, tuple(float(m) for m in multipliers[:slots]), overlap_frames(positions))


def plan_for_video(
    video: Path, fps: float, new_frames: int, multipliers: Sequence[float] = CONTINUE_MULTIPLIERS, field: str = OUTPUT_FIELD
) -> ContinuationPlan:
    """:func:`plan_continuation` for the file ``video`` read at ``fps``; decodes only the frames the plan could use."""
    stream, _ = iter_video(video, field, fps=fps)
    try:
        count = sum(1 for _ in itertools.islice(stream, overlap_frames(range(len(multipliers)))))
    finally:
        stream.close()
    return plan_continuation(count, new_frames, multipliers)


def check_adds_frames(positions: Sequence[int], new_frames: int) -> int:
    """The overlap of a continuation with these ``positions``; refused when the new part would add no frame."""
    overlap = overlap_frames(positions)
    if overlap >= new_frames:
        raise PusaInputError(
            "positions", f"cover all {new_frames} frames of the new part ({overlap} repeat the original), so nothing "
            "would be added; use fewer positions (e.g. 0,1,2,3) or more frames"
        )
    return overlap


def check_continuation(frames_from: object, positions: Sequence[int], new_frames: int) -> int:
    """The overlap of a Video-to-Video job that continues its video; refused unless it takes the last frames."""
    if frames_from != "last":
        raise PusaInputError(
            "frames_from", f"is {frames_from!r}; a continuation takes the video's last frames: choose 'last'"
        )
    return check_adds_frames(positions, new_frames)


def join_frames(original: np.ndarray, continuation: np.ndarray, overlap: int) -> np.ndarray:
    """``original`` then ``continuation`` without its first ``overlap`` frames (those repeat the original's end)."""
    if original.shape[1:] != continuation.shape[1:]:
        raise ValueError(f"frames differ in size: {original.shape[1:]} and {continuation.shape[1:]}")
    if not 0 <= overlap <= len(continuation):
        raise ValueError(f"overlap {overlap} is outside the continuation's {len(continuation)} frames")
    return np.concatenate([original, continuation[overlap:]])


@dataclass(frozen=True)
class JoinedVideo:
    video_path: Path
    settings_path: Path
    num_frames: int
    original_frames: int
    new_frames: int
    overlap: int
    fps: int


def _record(path: Path) -> dict[str, str]:
    return {"name": path.name, "sha256": sha256_file(path)}


def write_joined(
    outputs: OutputFolder, original: Path, part_video: Path, part_settings: dict[str, Any]
) -> JoinedVideo:
    """Join ``original`` and the continuation ``part_video`` (made with ``part_settings``) into a new output.

    The original is read at the part's size, fit and fps (a video continued at another size or rate
    still joins), streamed, so a video minutes long is never held whole. The settings beside the joined
    MP4 are the part's (load them to continue again) plus ``joined``: both parts by name and sha256.
    """
    s = part_settings["settings"]
    size, fit, fps = (int(s["width"]), int(s["height"])), s.get("fit", "crop"), int(s["fps"])
    overlap = check_continuation(part_settings.get("frames_from"), part_settings["positions"], int(s["num_frames"]))
    new_part, _ = read_video(part_video, field="video", size=size, fit=fit)
    if overlap > len(new_part):
        raise ValueError(f"{part_video.name} has {len(new_part)} frames, fewer than the {overlap} it should repeat")
    original_stream, _ = iter_video(original, OUTPUT_FIELD, size, fit, fps)
    written = [0]  # original frames, counted as they stream past (after resampling to the part's fps)

    def frames() -> Iterator[np.ndarray]:
        for frame in original_stream:
            written[0] += 1
            yield frame
        yield from new_part[overlap:]

    joined = {
        **part_settings,
        "joined": {"original": _record(original), "continuation": _record(part_video), "overlap_frames": overlap},
    }
    path = outputs.video_path(JOINED_TASK, int(s["seed"]))
    write_mp4(frames(), path, fps, joined)
    total = written[0] + len(new_part) - overlap
    # The MP4's metadata was written before the count was known; the JSON beside it has the counts too.
    joined["joined"].update(original_frames=written[0], new_frames=len(new_part), frames=total)
    settings_path = path.with_suffix(".json")
    settings_path.write_text(json.dumps(joined, indent=2))
    outputs.prune()
    return JoinedVideo(path, settings_path, total, written[0], len(new_part), overlap, fps)


def find_output(outputs: OutputFolder, name: object) -> Path:
    """The video called ``name`` among the output folder's own files; never a path built from the request.

    ``name`` is a bare file name as a call returned it (``i2v_20260101-120000_seed42.mp4``); anything with a
    separator or ``..``, or not one of the folder's MP4s, is refused.
    """
    if not isinstance(name, str) or not name.strip():
        raise PusaInputError(OUTPUT_FIELD, "is empty; give the file name of a video this app made, or upload a video")
    name = name.strip()
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise PusaInputError(
            OUTPUT_FIELD, f"{name[:80]!r} is not a bare file name; give the name a call returned, e.g. i2v_..._seed42.mp4"
        )
    root = outputs.root
    videos = {p.name: p for p in root.glob("*.mp4")} if root.is_dir() else {}
    found = videos.get(name)
    if found is None or not found.is_file() or found.is_symlink():
        raise PusaInputError(OUTPUT_FIELD, f"{name[:80]!r} is not a video in the output folder; give a name a call returned")
    return found


def last_frame(video: Path, field: str = "video") -> np.ndarray:
    """The final frame of ``video`` as RGB uint8 ``[H, W, 3]`` (the whole file is decoded, one frame is held)."""
    frames, _ = read_video(video, max_frames=1, field=field, last=True)
    return frames[0]
