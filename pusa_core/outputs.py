"""The output folder: where videos, their settings and copies of their inputs go, and what may come back.

Layout: ``<task>_<time>_seed<seed>.mp4`` with ``.json`` settings beside it, ``inputs/<sha256>.<ext>``
holding each input once, by content, and ``thumbs/<video stem>.jpg``, each video's first frame for the
history (made on first listing, deleted with its video). Settings never record a server path: an input is recorded
as its original base name and its sha256, and only a file in ``inputs/`` with that hash is ever
brought back, so a settings file cannot name its way to anything else on the server.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

INPUTS = "inputs"
THUMBS = "thumbs"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,5}$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Retention:
    """Which outputs to keep: the newest ``keep_newest`` jobs and/or those younger than ``keep_days``."""

    keep_newest: int | None = None
    keep_days: float | None = None

    @property
    def active(self) -> bool:
        return self.keep_newest is not None or self.keep_days is not None


class OutputFolder:
    """One app's output folder. Only the engine writes here; requests never name paths in it."""

    def __init__(self, root: Path, retention: Retention = Retention()) -> None:
        self.root = Path(root)
        self.retention = retention

    def video_path(self, task: str, seed: int) -> Path:
        """A new, unused ``<task>_<time>_seed<seed>.mp4`` path."""
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = self.root / f"{task}_{stamp}_seed{seed}.mp4"
        n = 1
        while path.exists() or path.with_suffix(".json").exists():
            n += 1
            path = self.root / f"{task}_{stamp}_seed{seed}_{n}.mp4"
        return path

    def thumbnail_path(self, video: Path) -> Path:
        """Where the thumbnail of ``video`` (one of this folder's MP4s) is kept."""
        return self.root / THUMBS / f"{video.stem}.jpg"

    def record_input(self, value: Any) -> Any:
        """What settings record for one input: ``{"name", "sha256"}`` for a file (a copy is kept in ``inputs/``)."""
        if isinstance(value, (str, Path)):
            source = Path(value)
            digest = sha256_file(source)
            suffix = source.suffix.lower() if _SUFFIX.match(source.suffix.lower()) else ""
            store = self.root / INPUTS
            store.mkdir(parents=True, exist_ok=True)
            target = store / f"{digest}{suffix}"
            if not target.exists():
                shutil.copyfile(source, target)
            return {"name": source.name, "sha256": digest}
        if isinstance(value, Image.Image):
            return f"<image {value.width}x{value.height}>"
        if isinstance(value, np.ndarray):
            return f"<array {list(value.shape)}>"
        return value

    def find_input(self, record: Any) -> Path | None:
        """The stored copy of a recorded input, or None. Anything but a well-formed hash record finds nothing."""
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            return None
        digest = record["sha256"]
        if not _SHA256.match(digest):
            return None
        store = self.root / INPUTS
        if not store.is_dir():
            return None
        for candidate in sorted(store.glob(f"{digest}*")):
            if candidate.is_file() and not candidate.is_symlink() and candidate.resolve().parent == store.resolve():
                return candidate
        return None

    def prune(self, now: float | None = None) -> list[Path]:
        """Apply the retention rule to finished jobs (with their thumbnails, and inputs no kept job uses); returns what was removed."""
        if not self.retention.active or not self.root.is_dir():
            return []
        now = time.time() if now is None else now
        videos = sorted(self.root.glob("*.mp4"), key=lambda p: p.stat().st_mtime, reverse=True)
        keep = videos
        if self.retention.keep_newest is not None:
            keep = keep[: self.retention.keep_newest]
        if self.retention.keep_days is not None:
            cutoff = now - self.retention.keep_days * 86400
            keep = [p for p in keep if p.stat().st_mtime >= cutoff]
        removed: list[Path] = []
        for video in videos:
            if video in keep:
                continue
            for path in (video, video.with_suffix(".json"), self.thumbnail_path(video)):
                if path.exists():
                    path.unlink()
                    removed.append(path)
        used = set()
        for video in keep:
            settings = video.with_suffix(".json")
            if settings.is_file():
                used.update(re.findall(r'"sha256": "([0-9a-f]{64})"', settings.read_text(errors="replace")))
        thumbs = self.root / THUMBS
        if thumbs.is_dir():
            kept = {video.stem for video in keep}
            for thumb in thumbs.iterdir():
                # A thumbnail being written is a hidden temporary file: left to its writer.
                if thumb.is_file() and thumb.suffix == ".jpg" and not thumb.name.startswith(".") and thumb.stem not in kept:
                    thumb.unlink()
                    removed.append(thumb)
        store = self.root / INPUTS
        if store.is_dir():
            for stored in store.iterdir():
                if stored.is_file() and stored.name[:64] not in used:
                    stored.unlink()
                    removed.append(stored)
        return removed
