"""Pusa Studio: ``python app.py`` serves the app on http://127.0.0.1:7860.

Flags (each also read from an environment variable, flags win):
  --host / PUSA_HOST (127.0.0.1)          --port / PUSA_PORT (7860)        --share (off)
  --weights-dir / PUSA_WEIGHTS_DIR (weights)  --base-dir / PUSA_BASE_DIR   --lora / PUSA_LORA
  --model / PUSA_MODEL {auto,pusa-14b,pusa-tiny,random-tiny} (auto)
  --placement / PUSA_PLACEMENT {shard,single,offload,cpu}   --fp8 / PUSA_FP8=1
  --output-dir / PUSA_OUTPUT_DIR (outputs)

The page is up at once; the model loads in the background and the status line says when it is ready.
Without the real weights, ``auto`` runs the small model shipped in ``weights/pusa-tiny`` (or, when that
is missing too, a random tiny model) and the page says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# First: on a ZeroGPU Space, `spaces` must be imported before torch initialises CUDA.
import ui.zerogpu  # noqa: F401  isort: skip

import gradio as gr

from pusa_core.engine import Engine
from pusa_core.placement import ENV_VAR as PLACEMENT_ENV
from pusa_core.placement import KINDS as PLACEMENT_KINDS
from pusa_core.tiny_models import random_tiny_components
from pusa_core.weights import DEFAULT_WEIGHTS_DIR, MODEL_CHOICES, WeightsError, preflight, resolve_model_source
from ui.blocks import build_app

RANDOM_TINY = "random-tiny"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pusa Studio: Pusa V1.0 video generation in the browser.")
    parser.add_argument("--host", default=os.environ.get("PUSA_HOST", "127.0.0.1"), help="address to serve on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PUSA_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--weights-dir", type=Path, default=_env_path("PUSA_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR)
    parser.add_argument("--base-dir", type=Path, default=_env_path("PUSA_BASE_DIR"), help="a Wan2.1-T2V-14B folder (diffusers or original layout)")
    parser.add_argument("--lora", type=Path, default=_env_path("PUSA_LORA"), help="the Pusa V1 LoRA file (pusa_v1.pt)")
    parser.add_argument(
        "--model",
        choices=(*MODEL_CHOICES, RANDOM_TINY),
        default=os.environ.get("PUSA_MODEL", "auto"),
        help="auto: the 14B model when its files are complete, else the small one; random-tiny: untrained, for trying the app",
    )
    parser.add_argument(
        "--placement", choices=PLACEMENT_KINDS, default=None,
        help=f"where the model runs (default: chosen for this machine; env {PLACEMENT_ENV} also works)",
    )
    parser.add_argument(
        "--fp8", action="store_true", default=os.environ.get("PUSA_FP8", "") == "1",
        help="store the 14B transformer's weights in fp8 (computes in bf16): about half the GPU memory (env PUSA_FP8=1)",
    )
    parser.add_argument("--output-dir", type=Path, default=_env_path("PUSA_OUTPUT_DIR") or Path("outputs"))
    args = parser.parse_args(argv)
    if args.model not in (*MODEL_CHOICES, RANDOM_TINY):
        parser.error(f"PUSA_MODEL={args.model!r} is not a model; choose one of {', '.join((*MODEL_CHOICES, RANDOM_TINY))}")
    return args


def small_model_notice(summary: str, fetch: str | None) -> str:
    fetch_line = f"\n\nTo run the real model, fetch its weights and restart the app:\n\n```bash\n{fetch}\n```" if fetch else ""
    return f"⚠️ **This is a small demo model, not Pusa V1 14B: it shows how the app works, not the quality of Pusa.** It was trained for about an hour on a CPU, on toy clips of moving shapes: its videos are blurry, and its shapes often smear or fade.\n\n{summary}{fetch_line}"


def random_model_notice(reason: str) -> str:
    return (
        "⚠️ **Running a random, untrained tiny model: its videos are noise.** It lets you try every part of the app "
        f"without any download.\n\n{reason}"
    )


def make_engine(args: argparse.Namespace) -> tuple[Engine, str]:
    """The engine for the chosen model, and the notice the page shows about it (empty for the real model)."""
    if args.model == RANDOM_TINY:
        return Engine.from_components(random_tiny_components(), output_dir=args.output_dir), random_model_notice(
            "Chosen with --model random-tiny."
        )
    report = preflight(args.weights_dir, args.base_dir, args.lora)
    print(report.summary, flush=True)
    try:
        source = resolve_model_source(args.weights_dir, args.base_dir, args.lora, args.model)
    except WeightsError:
        explicit = args.model != "auto" or args.base_dir is not None or args.lora is not None
        if explicit:
            raise
        # Nothing on disk at all: the app still starts, on a model built from configs, and says so.
        return Engine.from_components(random_tiny_components(), output_dir=args.output_dir), random_model_notice(
            f"No model was found. {report.summary}" + (f"\n\n```bash\n{report.fetch_command}\n```" if report.fetch_command else "")
        )
    # No --placement: the engine chooses for this machine (PUSA_PLACEMENT is read there too).
    engine = Engine.from_source(source, output_dir=args.output_dir, placement=args.placement, fp8=args.fp8)
    notice = small_model_notice(report.summary, report.fetch_command) if source.is_small else ""
    return engine, notice


def launch(demo: gr.Blocks, host: str, port: int, output_dir: Path, share: bool = False, block: bool = True) -> None:
    """Serve ``demo``; the GPU queue is shared by all tabs (see ui.runner.GPU_QUEUE)."""
    demo.queue(default_concurrency_limit=1)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(Path(output_dir).resolve())],
        prevent_thread_lock=not block,
        show_error=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        engine, notice = make_engine(args)
    except WeightsError as err:
        sys.exit(f"pusa studio: {err}")
    engine.start()
    launch(build_app(engine, notice), args.host, args.port, args.output_dir, share=args.share)


if __name__ == "__main__":
    main()
