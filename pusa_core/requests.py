"""Typed requests for the four tasks: what the UI hands the engine, and what settings files store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

import numpy as np
from PIL import Image

from . import facts
from .errors import PusaInputError

DEFAULT_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
    "picture, messy background, three legs, many people in the background, walking backwards"
)

ImageInput = Union[str, Path, Image.Image, np.ndarray]
Fit = Literal["crop", "pad"]


@dataclass(frozen=True)
class Settings:
    """Settings every task shares. ``seed=None`` picks a random seed; the one used is reported.

    ``preset`` picks the LoRAs stacked on Pusa's: ``"fast"`` adds LightX2V (see :func:`preset_settings`
    for the steps and guidance it runs at). ``extra_loras`` maps the name of a LoRA the engine was
    started with (``--extra-lora``) to its weight for this job; a loaded LoRA not named is off.
    ``step_cache`` is ``"off"`` or one of diffusers' cache hooks with its threshold, ``"first-block:0.05"``
    (see :mod:`pusa_core.cache_choice` for the ones offered).
    """

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int | None = None
    steps: int = facts.DEFAULT_STEPS
    cfg: float = facts.DEFAULT_CFG
    lora_alpha: float = facts.DEFAULT_ALPHA
    width: int = facts.DEFAULT_WIDTH
    height: int = facts.DEFAULT_HEIGHT
    num_frames: int = facts.DEFAULT_FRAMES
    fps: int = facts.DEFAULT_FPS
    fit: Fit = "crop"
    shift: float = facts.DEFAULT_SHIFT
    preset: str = facts.QUALITY
    extra_loras: Mapping[str, float] = field(default_factory=dict)
    step_cache: str = facts.STEP_CACHE_OFF


def preset_settings(quality: Settings, preset: str) -> Settings:
    """``quality`` (the model's own defaults) as ``preset`` runs it: Fast is 4 steps at cfg 1."""
    if preset == facts.FAST:  # its 4 distilled steps leave nothing to cache
        return replace(quality, preset=facts.FAST, steps=facts.FAST_STEPS, cfg=facts.FAST_CFG,
                       step_cache=facts.STEP_CACHE_OFF)
    return replace(quality, preset=preset)


@dataclass(frozen=True)
class ImageToVideo:
    """The image becomes latent frame 0 with a small noise multiplier (Pusa's published default)."""

    settings: Settings
    image: ImageInput
    noise_multiplier: float = facts.DEFAULT_NOISE_MULTIPLIER
    task: str = field(default="i2v", init=False)


@dataclass(frozen=True)
class MultiFrames:
    """Start/end frames or keyframes: one image per latent position, each with its own multiplier."""

    settings: Settings
    images: tuple[ImageInput, ...]
    positions: tuple[int, ...]
    multipliers: tuple[float, ...]
    task: str = field(default="multiframe", init=False)


FramesFrom = Literal["first", "last"]
FRAMES_FROM: tuple[str, ...] = ("first", "last")


@dataclass(frozen=True)
class VideoToVideo:
    """Extension, completion, transition: the listed latent slots are taken from the encoded video.

    ``frames_from``: ``"first"`` takes the slots' frames from the start of the video, ``"last"`` from its
    end (the last ``4 * max(positions) + 1`` frames: how a video is continued).
    """

    settings: Settings
    video: str | Path
    positions: tuple[int, ...]
    multipliers: tuple[float, ...]
    frames_from: FramesFrom = "first"
    task: str = field(default="v2v", init=False)


@dataclass(frozen=True)
class TextToVideo:
    settings: Settings
    task: str = field(default="t2v", init=False)


Request = Union[ImageToVideo, MultiFrames, VideoToVideo, TextToVideo]
TASKS = {cls.__dataclass_fields__["task"].default: cls for cls in (ImageToVideo, MultiFrames, VideoToVideo, TextToVideo)}


MEDIA_FIELDS = ("image", "images", "video")


def request_to_dict(
    request: Request, seed: int | None = None, record_input: Callable[[Any], Any] | None = None
) -> dict[str, Any]:
    """A JSON-ready record of the request; ``seed`` (the one actually used) replaces a random one.

    ``record_input`` says how a media input is recorded (the output folder records name and hash,
    never a server path); without it media inputs are left out.
    """
    out: dict[str, Any] = {"task": request.task}
    for f in fields(request):
        if f.name in ("task", "settings"):
            continue
        value = getattr(request, f.name)
        if f.name in MEDIA_FIELDS:
            if record_input is None:
                continue
            out[f.name] = [record_input(v) for v in value] if isinstance(value, tuple) else record_input(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    settings = asdict(request.settings)
    if seed is not None:
        settings["seed"] = seed
    out["settings"] = settings
    return out


def request_from_dict(data: dict[str, Any], find_input: Callable[[Any], Path | None] | None = None) -> Request:
    """Rebuild a request from :func:`request_to_dict` output.

    A media input given as a path is used as it is (a local script's own files); one recorded as
    ``{"name", "sha256"}`` is looked up with ``find_input`` (the output folder's copies).
    """
    task = data.get("task")
    if task not in TASKS:
        raise ValueError(f"task: unknown task {task!r}; expected one of {sorted(TASKS)}")
    known = {f.name for f in fields(Settings)}
    settings = Settings(**{k: v for k, v in data.get("settings", {}).items() if k in known})
    cls = TASKS[task]
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in ("task", "settings") or f.name not in data:
            continue
        value = data[f.name]
        if f.name in MEDIA_FIELDS:
            items = value if isinstance(value, list) else [value]
            found = [_media_path(item, f.name, find_input) for item in items]
            value = found if isinstance(value, list) else found[0]
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(settings=settings, **kwargs)


def _media_path(item: Any, field: str, find_input: Callable[[Any], Path | None] | None) -> Any:
    if not isinstance(item, dict):
        return item
    found = find_input(item) if find_input is not None else None
    if found is None:
        raise PusaInputError(field, f"{str(item.get('name'))!r} is not kept on this server any more; give the file again")
    return str(found)
