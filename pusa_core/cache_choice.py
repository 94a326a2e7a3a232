"""Which step-caching settings a job may ask for: parsing, the measured list, and the refusals.

Torch-free: the UI's dropdown and the request validation read it. A setting is written
``KIND:THRESHOLD`` (``first-block:0.05``, ``taylorseer:2``) or ``off``. Only settings under which every
quality check that passes with caching off still passes on the small model are offered
(``benchmarks/step_cache.py`` writes :data:`MEASURED_FILE`; the README's "Step caching" table is its
printout); any other is refused with that list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import facts
from .errors import PusaInputError

FIELD = "step_cache"
MEASURED_FILE = Path(__file__).parent / "configs" / "step_cache_checks.json"


@dataclass(frozen=True)
class StepCache:
    """One of diffusers' cache hooks and its threshold (see :data:`facts.STEP_CACHE_THRESHOLDS`)."""

    kind: str
    threshold: float

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.threshold:g}"


def parse_step_cache(value: Any) -> StepCache | None:
    """``"off"`` -> None; ``"KIND:THRESHOLD"`` -> :class:`StepCache`; anything else is refused."""
    how = f"write off or KIND:THRESHOLD with KIND one of {', '.join(facts.STEP_CACHE_KINDS)} (e.g. {facts.FIRST_BLOCK}:0.05)"
    if not isinstance(value, str):
        raise PusaInputError(FIELD, f"must be text, got {value!r}; {how}")
    text = value.strip().lower()
    if text == facts.STEP_CACHE_OFF:
        return None
    kind, sep, number = text.partition(":")
    if not sep or kind not in facts.STEP_CACHE_KINDS:
        raise PusaInputError(FIELD, f"{value!r} is not a step-cache setting; {how}")
    try:
        threshold = float(number)
    except ValueError:
        raise PusaInputError(FIELD, f"{value!r} has no number after the colon; {how}") from None
    limit = facts.STEP_CACHE_THRESHOLDS[kind]
    if problem := limit.check(int(threshold) if limit.whole and threshold.is_integer() else threshold):
        raise PusaInputError(FIELD, f"{kind}'s threshold {problem}")
    return StepCache(kind, threshold)


@lru_cache(maxsize=1)
def measured_rows() -> tuple[dict[str, Any], ...]:
    """The benchmark's rows: setting, passes, skipped, and each check's claim, value and verdict."""
    if not MEASURED_FILE.is_file():
        return ()
    return tuple(json.loads(MEASURED_FILE.read_text())["rows"])


def lost_checks(row: dict[str, Any], rows: tuple[dict[str, Any], ...]) -> list[str]:
    """The claims that pass with caching off and fail under ``row``'s setting (same clips, same seeds)."""
    off = next(r for r in rows if r["setting"] == facts.STEP_CACHE_OFF)
    return [mine["claim"] for mine, base in zip(row["checks"], off["checks"]) if base["passed"] and not mine["passed"]]


def offered_step_caches() -> tuple[str, ...]:
    """``off`` and every measured setting that loses no quality check, in the table's order."""
    rows = measured_rows()
    keeping = [r["setting"] for r in rows if r["setting"] != facts.STEP_CACHE_OFF and not lost_checks(r, rows)]
    return (facts.STEP_CACHE_OFF, *keeping)


def full_passes(steps: int, cfg: float, cache: StepCache | None) -> int:
    """Transformer passes a job is sure to run in full: every step's (two with guidance), less the steps
    TaylorSeer predicts. Its schedule is fixed in advance (diffusers' ``_measure_should_compute``): a
    step runs in full during warm-up, on the interval, and at the last step. first-block decides from the
    model's outputs as it goes, so no pass is certain to be skipped."""
    branches = 1 if cfg == 1 else 2
    if cache is None or cache.kind != facts.TAYLORSEER:
        return steps * branches
    warmup, interval = facts.TAYLORSEER_WARMUP_STEPS, int(cache.threshold)
    full = sum(1 for i in range(steps) if i < warmup or (i - warmup - 1) % interval == 0 or i >= steps - 1)
    return full * branches


def check_step_cache(value: Any, steps: Any, preset: str) -> StepCache | None:
    """The job's step cache, or a refusal naming the field and the fix."""
    cache = parse_step_cache(value)
    if cache is None:
        return None
    if preset == facts.FAST:
        raise PusaInputError(FIELD, f"cannot be used with the Fast preset: its {facts.FAST_STEPS} distilled steps each "
                                    "move far from the last, so there is nothing to reuse; set step_cache to off")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps < facts.MIN_CACHED_STEPS:
        raise PusaInputError(FIELD, f"needs at least {facts.MIN_CACHED_STEPS} steps (the steps it was measured at), got "
                                    f"{steps}; raise steps or set step_cache to off")
    offered = offered_step_caches()
    if cache.text not in offered:
        rows = measured_rows()
        row = next((r for r in rows if r["setting"] == cache.text), None)
        why = (f"fails {len(lost_checks(row, rows))} quality check(s) on the small model that pass with caching off"
               if row is not None else "was not measured on the small model")
        raise PusaInputError(FIELD, f"{cache.text!r} {why} (README, 'Step caching'); use one of {', '.join(offered)}")
    return cache
