"""Which step-caching settings a job may ask for: parsing, the measured list, and the refusals.

Torch-free: the UI's dropdown and the request validation read it. A setting is written
``KIND:THRESHOLD`` (``first-block:0.05``, ``taylorseer:2``) or ``off``. Only settings whose quality
checks passed on the small model (``benchmarks/step_cache.py`` writes :data:`MEASURED_FILE`; the
README's "Step caching" table is its printout) are offered; any other is refused with that list.
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
    """The benchmark's rows: setting, passes, skipped, checks passed of checks run, all_passed."""
    if not MEASURED_FILE.is_file():
        return ()
    return tuple(json.loads(MEASURED_FILE.read_text())["rows"])


def offered_step_caches() -> tuple[str, ...]:
    """``off`` and every measured setting whose quality checks all passed, in the table's order."""
    passing = [row["setting"] for row in measured_rows() if row["all_passed"] and row["setting"] != facts.STEP_CACHE_OFF]
    return (facts.STEP_CACHE_OFF, *passing)


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
        rows = {row["setting"]: row for row in measured_rows()}
        why = (f"failed {row['checks_run'] - row['checks_passed']} of the {row['checks_run']} quality checks on the small model"
               if (row := rows.get(cache.text)) else "was not measured on the small model")
        raise PusaInputError(FIELD, f"{cache.text!r} {why} (README, 'Step caching'); use one of {', '.join(offered)}")
    return cache
