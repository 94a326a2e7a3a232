"""Errors the engine raises for its callers (the UI turns them into messages)."""

from __future__ import annotations


class PusaInputError(ValueError):
    """A request field is invalid. ``field`` names it; the message says what to do instead."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class GenerationCancelled(Exception):
    """Raised inside the denoising loop when the caller asked to stop."""


class EngineNotReady(RuntimeError):
    """The models are still loading (or failed to load)."""


class JobTimedOut(RuntimeError):
    """A job ran past the engine's time limit; the message says where it stopped and what to lower."""
