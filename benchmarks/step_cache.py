"""Step caching on the small model: passes skipped and every quality check of ``evaluate``, per setting.

    python benchmarks/step_cache.py [--model-dir weights/pusa-tiny] [--clips 16] [--write]

Runs ``pusa_core.training.evaluate`` (every task, with the LoRA and with the base, at the model's own
steps and guidance) once with caching off and once per hook and threshold below, and prints one
Markdown table: the share of transformer passes whose blocks were skipped, then each check's value
and whether it passed. ``--write`` stores the rows in ``pusa_core/configs/step_cache_checks.json``,
which decides what the app offers: only settings under which every check that passes with caching
off (same clips, same noise) still passes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pusa_core import facts  # noqa: E402
from pusa_core.cache_choice import MEASURED_FILE, lost_checks  # noqa: E402
from pusa_core.training.evaluate import EvalSettings, checks, evaluate, load_model  # noqa: E402

SETTINGS = (
    facts.STEP_CACHE_OFF,
    "first-block:0.02", "first-block:0.05", "first-block:0.1", "first-block:0.2",
    "taylorseer:2", "taylorseer:3",
)


def measure(model_dir: Path, clips: int, settings: tuple[str, ...]) -> list[dict[str, Any]]:
    model = load_model(model_dir)
    d = model.defaults
    rows = []
    for setting in settings:
        eval_settings = EvalSettings(d["steps"], d["cfg"], d["lora_alpha"], d["noise_multiplier"],
                                     d.get("shift", facts.DEFAULT_SHIFT), step_cache=setting)
        with torch.inference_mode():
            metrics = evaluate(model, eval_settings, clips, None)
        results = checks(metrics)
        rows.append({
            "setting": setting, **metrics["passes"],
            "checks": [{"claim": c.claim, "value": c.value, "passed": c.passed} for c in results],
            "checks_run": len(results), "checks_passed": sum(c.passed for c in results),
        })
        print(f"{setting}: {rows[-1]['skipped']}/{rows[-1]['passes']} passes skipped, "
              f"{rows[-1]['checks_passed']}/{len(results)} checks pass", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Settings as columns; passes skipped, then each check (value, and ✗ where it fails)."""
    lines = ["| | " + " | ".join(f"`{r['setting']}`" for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    lines.append("| passes skipped | " + " | ".join(
        f"{r['skipped']}/{r['passes']} ({r['skipped'] / r['passes']:.0%})" for r in rows) + " |")
    for i, check in enumerate(rows[0]["checks"]):
        cells = []
        for r in rows:
            c = r["checks"][i]
            value = "n/a" if c["value"] is None else f"{c['value']:.3g}"
            cells.append(value if c["passed"] else f"{value} ✗")
        lines.append(f"| {check['claim']} | " + " | ".join(cells) + " |")
    lines.append("| checks passed | " + " | ".join(f"{r['checks_passed']}/{r['checks_run']}" for r in rows) + " |")
    offered = ["always" if r["setting"] == facts.STEP_CACHE_OFF else "no" if lost_checks(r, tuple(rows)) else "yes"
               for r in rows]
    lines.append("| offered by the app | " + " | ".join(offered) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("weights/pusa-tiny"))
    parser.add_argument("--clips", type=int, default=16, help="held-out clips per task (the README's table: 16)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="off and KIND:THRESHOLD settings")
    parser.add_argument("--write", action="store_true", help=f"store the rows in {MEASURED_FILE.name} (what the app offers)")
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error("--clips must be at least 1")
    if facts.STEP_CACHE_OFF not in args.settings:
        parser.error("--settings must include off: each setting is judged against it")
    rows = measure(args.model_dir, args.clips, tuple(args.settings))
    print(table(rows))
    if args.write:
        MEASURED_FILE.write_text(json.dumps({"model": str(args.model_dir), "clips": args.clips, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
