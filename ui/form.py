"""Form values <-> ``pusa_core`` settings, both ways.

Values arrive as gradio gives them, or as an API caller sent them (None, strings, NaN). This module
only turns them into a :class:`Settings`; the engine checks every range against :mod:`pusa_core.facts`,
so the messages a user sees name the same fields whether they use the page or ``gradio_client``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import gradio as gr

from pusa_core import conditioning, facts
from pusa_core.conditioning import parse_number as number
from pusa_core.errors import PusaInputError
from pusa_core.requests import Settings


def parse_size(text: object) -> tuple[int, int]:
    """``"832x480"`` -> ``(832, 480)``; the message points at the size presets too."""
    return conditioning.parse_size(text, how="pick a preset or type WIDTHxHEIGHT")


def seed_value(seed: Any, randomize_seed: Any) -> int | float | None:
    if not isinstance(randomize_seed, bool):
        raise PusaInputError("randomize_seed", f"must be true or false, got {randomize_seed!r}")
    if randomize_seed:
        return None
    if seed is None:
        raise PusaInputError("seed", "is empty; type a whole number, or tick 'Random seed'")
    return number(seed, "seed")


def text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PusaInputError(field, f"must be text, got {type(value).__name__}")
    return value.strip()


EXTRA_LORAS_EXAMPLE = "style:0.8, motion:1"


def parse_extra_loras(value: Any) -> dict[str, int | float | Any]:
    """``"style:0.8, motion:1"`` -> ``{"style": 0.8, "motion": 1}``; empty text is no extra LoRA.

    The engine checks the names against the LoRAs it loaded and the weights against their range.
    """
    out: dict[str, Any] = {}
    for item in text(value, "extra_loras").split(","):
        if not item.strip():
            continue
        name, sep, weight = item.rpartition(":")
        name = name.strip()
        if not sep or not name or not weight.strip():
            raise PusaInputError("extra_loras", f"{item.strip()!r} is not name:weight; write e.g. {EXTRA_LORAS_EXAMPLE}")
        if name in out:
            raise PusaInputError("extra_loras", f"{name!r} is listed twice; give each LoRA once")
        out[name] = number(weight.strip(), "extra_loras")
    return out


def format_extra_loras(weights: dict[str, float]) -> str:
    """The text :func:`parse_extra_loras` reads back."""
    return ", ".join(f"{name}:{weight:g}" for name, weight in weights.items())


def build_settings(values: dict[str, Any]) -> Settings:
    """The shared settings from the form's values, keyed by the handler's parameter names."""
    width, height = parse_size(values["size"])
    return Settings(
        prompt=text(values["prompt"], "prompt"),
        negative_prompt=text(values["negative_prompt"], "negative_prompt"),
        seed=seed_value(values["seed"], values["randomize_seed"]),
        steps=number(values["steps"], "steps"),
        cfg=number(values["cfg"], "cfg"),
        lora_alpha=number(values["lora_alpha"], "lora_alpha"),
        width=width,
        height=height,
        num_frames=number(values["frames"], "num_frames"),
        fps=number(values["fps"], "fps"),
        fit=values["fit"],
        preset=values["preset"],
        extra_loras=parse_extra_loras(values["extra_loras"]),
        step_cache=values["step_cache"],
    )


def shared_values(saved: dict[str, Any]) -> dict[str, Any]:
    """Form values, by handler parameter name, from a saved ``settings`` dict; keys it lacks are left out."""
    known = {f.name for f in fields(Settings)}
    s = {k: v for k, v in saved.items() if k in known}
    out: dict[str, Any] = {}
    for name in ("prompt", "negative_prompt", "steps", "cfg", "lora_alpha", "fit", "fps"):
        if name in s:
            out[name] = s[name]
    if "num_frames" in s:
        out["frames"] = s["num_frames"]
    if "width" in s and "height" in s:
        out["size"] = f"{s['width']}x{s['height']}"
    if s:
        # Settings saved before presets existed ran Quality, with no extra LoRA.
        out["preset"] = s.get("preset", facts.QUALITY)
        extra = s.get("extra_loras", {})
        out["extra_loras"] = format_extra_loras(extra) if isinstance(extra, dict) else str(extra)
        out["step_cache"] = s.get("step_cache", facts.STEP_CACHE_OFF)
    if s.get("seed") is not None:
        # A saved seed reproduces the video only if it is used.
        out["seed"], out["randomize_seed"] = s["seed"], False
    return out


def comma_list(values: Sequence[Any]) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def saved_lists(data: dict[str, Any], names: Sequence[str]) -> dict[str, str]:
    """Saved lists (positions, multipliers) as the comma-separated text their boxes take."""
    return {name: comma_list(data[name]) for name in names if isinstance(data.get(name), list)}


def skip_missing(names: Sequence[str], values: dict[str, Any]) -> list[Any]:
    """``values`` in ``names`` order, with ``gr.skip()`` for the names it lacks."""
    return [values[name] if name in values else gr.skip() for name in names]


def inside(path: Path, root: Path) -> bool:
    """True when ``path``, with every link resolved, lies inside ``root``."""
    try:
        return path.resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except (OSError, RuntimeError):
        return False
