"""The output folder as a history: every finished job, newest first, paged, with a thumbnail each.

The listing is read from disk (an MP4 with the settings JSON beside it is one entry), so it survives a
restart. It is also the only way in: a name a request gives is looked up by exact match among the
names the listing found, never joined onto a path, so nothing outside the folder's own videos can be
named (no ``..``, no separators, no links).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import PusaInputError
from .facts import MAX_SETTINGS_BYTES
from .media import read_video
from .outputs import OutputFolder

NAME_FIELD = "name"
PAGE_FIELD = "page"
PER_PAGE_FIELD = "per_page"
DEFAULT_PER_PAGE = 12
MAX_PER_PAGE = 48
THUMB_WIDTH = 192
_MAX_NAME = 255


@dataclass(frozen=True)
class HistoryEntry:
    """One finished job: its video, and what its settings say about it."""

    name: str  # the MP4's file name, the entry's key
    video: Path
    settings: Path
    task: str
    prompt: str
    seed: int | None
    created: float  # the MP4's modification time (seconds since the epoch)
    frames: int | None
    fps: float | None
    width: int | None
    height: int | None

    @property
    def seconds(self) -> float | None:
        return round(self.frames / self.fps, 3) if self.frames and self.fps else None

    @property
    def created_text(self) -> str:
        """Local time with its offset, e.g. ``2026-12-03T06:40:12+00:00``."""
        return datetime.fromtimestamp(self.created).astimezone().isoformat(timespec="seconds")

    def as_json(self) -> dict[str, Any]:
        """What ``/history`` returns for the entry."""
        return {
            "name": self.name, "task": self.task, "prompt": self.prompt, "seed": self.seed, "created": self.created_text,
            "frames": self.frames, "seconds": self.seconds, "fps": self.fps, "width": self.width, "height": self.height,
        }


@dataclass(frozen=True)
class HistoryPage:
    entries: tuple[HistoryEntry, ...]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def as_json(self) -> dict[str, Any]:
        return {
            "page": self.page, "per_page": self.per_page, "pages": self.pages, "total": self.total,
            "entries": [entry.as_json() for entry in self.entries],
        }


def _whole(value: object, field: str, low: int, high: int | None, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise PusaInputError(field, f"must be a whole number, got {value!r}; e.g. {example}")
    number = int(value)
    if number < low or (high is not None and number > high):
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise PusaInputError(field, f"must be {span}, got {number}; e.g. {example}")
    return number


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() else None


def _number_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


class History:
    """The finished jobs of one output folder."""

    def __init__(self, outputs: OutputFolder) -> None:
        self.outputs = outputs
        # Parsed settings by file name, valid while the JSON's (mtime, size) is unchanged: a listing re-reads
        # only what changed.
        self._settings: dict[str, tuple[tuple[int, int], dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[HistoryEntry]:
        """Every video of the folder with readable settings beside it, newest first."""
        root = self.outputs.root
        if not root.is_dir():
            return []
        found = []
        for video in root.glob("*.mp4"):
            try:
                if video.is_symlink() or not video.is_file():
                    continue
                stat = video.stat()
                entry = self._entry(video, stat.st_mtime)
            except OSError:  # removed by the retention rule while we looked
                continue
            if entry is not None:
                found.append((stat.st_mtime_ns, entry))
        found.sort(key=lambda item: (item[0], item[1].name), reverse=True)
        with self._lock:  # forget settings of files that are gone
            names = {entry.settings.name for _, entry in found}
            for name in [n for n in self._settings if n not in names]:
                del self._settings[name]
        return [entry for _, entry in found]

    def page(self, page: object = 1, per_page: object = DEFAULT_PER_PAGE) -> HistoryPage:
        """Entries ``(page-1)*per_page`` onwards; a page past the last is empty (``total`` says how many there are)."""
        page = _whole(page, PAGE_FIELD, 1, None, "1 for the newest")
        per_page = _whole(per_page, PER_PAGE_FIELD, 1, MAX_PER_PAGE, str(DEFAULT_PER_PAGE))
        entries = self.entries()
        start = (page - 1) * per_page
        return HistoryPage(tuple(entries[start : start + per_page]), page, per_page, len(entries))

    def find(self, name: object) -> HistoryEntry:
        """The entry called exactly ``name``; anything that is not a listed file name is refused with the reason."""
        if not isinstance(name, str):
            raise PusaInputError(NAME_FIELD, f"must be a video's file name as /history lists it, got {type(name).__name__}")
        if not name.strip():
            raise PusaInputError(NAME_FIELD, "is empty; give a video's name as /history lists it")
        shown = name[:80]
        if (
            "/" in name or "\\" in name or "\x00" in name or name.startswith(".") or len(name) > _MAX_NAME
        ):
            raise PusaInputError(
                NAME_FIELD, f"{shown!r} is not a bare file name; give a name as /history lists it, "
                "e.g. t2v_20260101-120000_seed42.mp4",
            )
        for entry in self.entries():
            if entry.name == name:
                return entry
        raise PusaInputError(
            NAME_FIELD, f"{shown!r} is not in the history (it may have been deleted by the retention rule); "
            "list the history again and pick a name from it",
        )

    def thumbnail(self, entry: HistoryEntry) -> Path | None:
        """The entry's first frame as a small JPEG, made once and kept in ``thumbs/``; None if the video will not decode."""
        path = self.outputs.thumbnail_path(entry.video)
        try:
            if path.is_file() and path.stat().st_mtime >= entry.video.stat().st_mtime:
                return path
            frames, _ = read_video(entry.video, max_frames=1)
        except (OSError, PusaInputError):
            return None
        image = Image.fromarray(frames[0])
        if image.width > THUMB_WIDTH:
            image = image.resize((THUMB_WIDTH, max(1, round(image.height * THUMB_WIDTH / image.width))), Image.LANCZOS)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed, so a page never shows half a file and two sessions never clash.
        handle, temporary = tempfile.mkstemp(prefix=f".{entry.video.stem}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                image.save(out, format="JPEG", quality=85)
            os.replace(temporary, path)
        except OSError:
            Path(temporary).unlink(missing_ok=True)
            return None
        return path

    def _entry(self, video: Path, created: float) -> HistoryEntry | None:
        settings_path = video.with_suffix(".json")
        data = self._read_settings(settings_path)
        if data is None:
            return None
        s = data["settings"]
        prompt = s.get("prompt")
        # A joined continuation's settings are its new part's; its own length is recorded under "joined".
        joined = data.get("joined")
        frames = joined.get("frames") if isinstance(joined, dict) and "frames" in joined else s.get("num_frames")
        return HistoryEntry(
            name=video.name, video=video, settings=settings_path, task=data["task"],
            prompt=prompt if isinstance(prompt, str) else "", seed=_int_or_none(s.get("seed")), created=created,
            frames=_int_or_none(frames), fps=_number_or_none(s.get("fps")),
            width=_int_or_none(s.get("width")), height=_int_or_none(s.get("height")),
        )

    def _read_settings(self, path: Path) -> dict[str, Any] | None:
        """The settings JSON as the app wrote it (a task and a settings object), or None."""
        try:
            if path.is_symlink() or not path.is_file():
                return None
            stat = path.stat()
        except OSError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._settings.get(path.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        data: dict[str, Any] | None = None
        if stat.st_size <= MAX_SETTINGS_BYTES:
            try:
                loaded = json.loads(path.read_bytes().decode("utf-8"))
            except (OSError, ValueError, RecursionError):
                loaded = None
            if isinstance(loaded, dict) and isinstance(loaded.get("task"), str) and isinstance(loaded.get("settings"), dict):
                data = loaded
        with self._lock:
            self._settings[path.name] = (key, data)
        return data

