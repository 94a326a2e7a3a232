"""Which model an engine runs, from the ``--model``, ``--weights-dir``, ``--base-dir`` and ``--lora`` flags.

One rule for the app and the command line: ``random-tiny`` builds an untrained tiny model with no
files; otherwise the weights on disk decide (see :func:`~pusa_core.weights.resolve_model_source`),
and ``auto`` with nothing on disk at all also runs the random tiny model, saying so. Explicit
choices or paths that cannot run raise :class:`~pusa_core.weights.WeightsError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .engine import Engine, SpeedOptions
from .outputs import Retention
from .ranks import Ranks
from .tiny_models import random_tiny_components
from .weights import MODEL_CHOICES, WeightsError, preflight, resolve_model_source

RANDOM_TINY = "random-tiny"
MODELS = (*MODEL_CHOICES, RANDOM_TINY)


@dataclass(frozen=True)
class ModelChoice:
    engine: Engine
    kind: Literal["real", "small", "random"]
    reason: str  # what the weights check found, or why a random model runs
    fetch_command: str | None = None  # how to download the real weights, when they are missing


def choose_engine(
    model: str,
    weights_dir: Path,
    base_dir: Path | None = None,
    lora: Path | None = None,
    *,
    output_dir: Path = Path("outputs"),
    placement: str | None = None,
    fp8: bool = False,
    retention: Retention = Retention(),
    max_job_seconds: float | None = None,
    say: Callable[[str], None] = lambda text: None,
    speed: Callable[[bool], SpeedOptions] | None = None,
    ranks: Ranks | None = None,
) -> ModelChoice:
    """An engine (not started) for the chosen model. ``say`` hears the weights check's summary first;
    ``speed`` gives the job options (preset, stacked LoRAs, GPU options) for a small model or not;
    ``ranks``: the torchrun ranks that run every job together (default: this process alone)."""
    options = {"output_dir": output_dir, "placement": placement, "retention": retention,
               "max_job_seconds": max_job_seconds, "ranks": ranks}

    def job_options(small: bool) -> dict[str, Any]:
        return {"speed": speed(small)} if speed is not None else {}

    def tiny() -> Engine:
        return Engine.from_components(random_tiny_components(), **options, **job_options(True))

    if model == RANDOM_TINY:
        return ModelChoice(tiny(), "random", "Chosen with --model random-tiny.")
    report = preflight(weights_dir, base_dir, lora)
    say(report.summary)
    try:
        source = resolve_model_source(weights_dir, base_dir, lora, model)
    except WeightsError:
        if model != "auto" or base_dir is not None or lora is not None:
            raise
        # Nothing on disk at all: still a working engine, on a model built from configs; the caller says so.
        return ModelChoice(tiny(), "random", f"No model was found. {report.summary}", report.fetch_command)
    engine = Engine.from_source(source, fp8=fp8, **options, **job_options(source.is_small))
    return ModelChoice(engine, "small" if source.is_small else "real", report.summary, report.fetch_command)
