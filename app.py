"""Pusa Studio: ``python app.py`` serves the app on http://127.0.0.1:7860.

Flags (each also read from an environment variable, flags win):
  --host / PUSA_HOST (GRADIO_SERVER_NAME when set, as on a Space; else 127.0.0.1)
  --port / PUSA_PORT (GRADIO_SERVER_PORT when set; else 7860)      --share (off)
  --auth USER:PASSWORD / PUSA_AUTH (off)     --max-upload-mb / PUSA_MAX_UPLOAD_MB (200)
  --max-queue / PUSA_MAX_QUEUE (20)          --max-job-seconds / PUSA_MAX_JOB_SECONDS (no limit)
  --keep-outputs N / PUSA_KEEP_OUTPUTS       --keep-days D / PUSA_KEEP_DAYS (keep everything)
  --weights-dir / PUSA_WEIGHTS_DIR (weights)  --base-dir / PUSA_BASE_DIR   --lora / PUSA_LORA
  --model / PUSA_MODEL {auto,pusa-14b,pusa-tiny,random-tiny} (auto)
  --placement / PUSA_PLACEMENT {shard,single,offload,cpu,cfg-parallel,sequence-parallel}   --fp8 / PUSA_FP8=1
  --collective-timeout SECONDS / PUSA_COLLECTIVE_TIMEOUT (300): under torchrun, how long a rank waits for the others
  --output-dir / PUSA_OUTPUT_DIR (outputs)
  --preset / PUSA_PRESET {quality,fast} (quality): the page's preset; Fast needs the LightX2V LoRA
  --extra-lora PATH[:WEIGHT] (repeatable): another Wan LoRA jobs may stack, at WEIGHT (1) unless they say
  --attention-backend / PUSA_ATTENTION_BACKEND (native)   --compile / PUSA_COMPILE=1 (off)

The page is up at once; the model loads in the background and the status line says when it is ready.
Without the real weights, ``auto`` runs the small model shipped in ``weights/pusa-tiny`` (or, when that
is missing too, a random tiny model) and the page says so.

``torchrun --nproc-per-node 2 app.py [same flags]`` runs every job on 2 ranks (cfg-parallel or
sequence-parallel): rank 0 serves the page, the others run its jobs with it (:mod:`pusa_core.ranks`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# First: on a ZeroGPU Space, `spaces` must be imported before torch initialises CUDA.
import ui.zerogpu  # noqa: F401  isort: skip

import gradio as gr

from pusa_core import facts
from pusa_core.adapters import LIGHTX2V_ADAPTER, LoraCatalog, LoraSpec, parse_extra_lora
from pusa_core.engine import Engine, SpeedOptions
from pusa_core.errors import PusaInputError
from pusa_core.outputs import Retention
from pusa_core.placement import ENV_VAR as PLACEMENT_ENV
from pusa_core.placement import KINDS as PLACEMENT_KINDS
from pusa_core.model_choice import MODELS, choose_engine
from pusa_core.ranks import DEFAULT_TIMEOUT_SECONDS, TIMEOUT_ENV, TIMEOUT_FLAG, Ranks, check_launch, collective_timeout, launched_ranks
from pusa_core.speed import check_attention_backend
from pusa_core.weights import (
    DEFAULT_WEIGHTS_DIR,
    LIGHTX2V_DIRNAME,
    LIGHTX2V_FILENAME,
    LIGHTX2V_REPO_ID,
    WeightsError,
    fetch_command,
    find_lightx2v,
    lightx2v_fetch_command,
    lora_problems,
)
from ui.blocks import build_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_QUEUE = 20


def _env(*names: str) -> str | None:
    """The first of ``names`` set (and not empty) in the environment: the one place the app reads it."""
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _env_path(name: str) -> Path | None:
    value = _env(name)
    return Path(value) if value else None


def _auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("must be USER:PASSWORD, both parts non-empty")
    return user, password


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _extra_lora(text: str) -> LoraSpec:
    """``PATH[:WEIGHT]`` of a LoRA file whose header reads; its keys are checked when the model loads."""
    try:
        spec = parse_extra_lora(text)
    except PusaInputError as err:
        raise argparse.ArgumentTypeError(err.message) from None
    assert isinstance(spec.source, Path)
    if problems := lora_problems(spec.source):
        raise argparse.ArgumentTypeError(problems[0])
    return spec


def _collective_timeout(text: str) -> float:
    try:
        return collective_timeout(text)
    except PusaInputError as err:
        raise argparse.ArgumentTypeError(err.message) from None


def _attention_backend(name: str) -> str:
    try:
        return check_attention_backend(name)
    except PusaInputError as err:
        raise argparse.ArgumentTypeError(err.message) from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pusa Studio: Pusa V1.0 video generation in the browser.")
    parser.add_argument(
        "--host", default=_env("PUSA_HOST", "GRADIO_SERVER_NAME") or DEFAULT_HOST,
        help="address to serve on (0.0.0.0 for all); default GRADIO_SERVER_NAME when set, else 127.0.0.1",
    )
    parser.add_argument("--port", type=int, default=_env("PUSA_PORT", "GRADIO_SERVER_PORT") or DEFAULT_PORT)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument(
        "--auth", type=_auth, default=_env("PUSA_AUTH"), metavar="USER:PASSWORD",
        help="ask for this login before the page or the API answers (env PUSA_AUTH)",
    )
    parser.add_argument(
        "--max-upload-mb", type=_positive(int), default=_env("PUSA_MAX_UPLOAD_MB") or facts.MAX_UPLOAD_MB,
        help=f"largest upload accepted, in MB (default {facts.MAX_UPLOAD_MB})",
    )
    parser.add_argument(
        "--max-queue", type=_positive(int), default=_env("PUSA_MAX_QUEUE") or DEFAULT_MAX_QUEUE,
        help=f"jobs that may wait at once; more get 'queue full, try again' (default {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--max-job-seconds", type=_positive(float), default=_env("PUSA_MAX_JOB_SECONDS"),
        help="stop a job that runs longer than this, with a message; the app stays ready (default: no limit)",
    )
    parser.add_argument(
        "--keep-outputs", type=_positive(int), default=_env("PUSA_KEEP_OUTPUTS"), metavar="N",
        help="keep only the newest N videos in the output folder (default: keep all)",
    )
    parser.add_argument(
        "--keep-days", type=_positive(float), default=_env("PUSA_KEEP_DAYS"), metavar="D",
        help="delete videos older than D days from the output folder (default: keep all)",
    )
    parser.add_argument("--weights-dir", type=Path, default=_env_path("PUSA_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR)
    parser.add_argument("--base-dir", type=Path, default=_env_path("PUSA_BASE_DIR"), help="a Wan2.1-T2V-14B folder (diffusers or original layout)")
    parser.add_argument("--lora", type=Path, default=_env_path("PUSA_LORA"), help="the Pusa V1 LoRA file (pusa_v1.pt)")
    parser.add_argument(
        "--model",
        choices=MODELS,
        default=_env("PUSA_MODEL") or "auto",
        help="auto: the 14B model when its files are complete, else the small one; random-tiny: untrained, for trying the app",
    )
    parser.add_argument(
        "--placement", choices=PLACEMENT_KINDS, default=_env(PLACEMENT_ENV),
        help=f"where the model runs (default: chosen for this machine; env {PLACEMENT_ENV} also works)",
    )
    parser.add_argument(
        "--fp8", action="store_true", default=_env("PUSA_FP8") == "1",
        help="store the 14B transformer's weights in fp8 (computes in bf16): about half the GPU memory (env PUSA_FP8=1)",
    )
    parser.add_argument("--output-dir", type=Path, default=_env_path("PUSA_OUTPUT_DIR") or Path("outputs"))
    parser.add_argument(
        "--preset", choices=facts.PRESETS, default=os.environ.get("PUSA_PRESET", facts.QUALITY),
        help=f"the page's preset: quality (the model's defaults) or fast (LightX2V, {facts.FAST_STEPS} steps, cfg "
        f"{facts.FAST_CFG:g}; fetch it with python -m pusa_core.download --lightx2v); env PUSA_PRESET",
    )
    parser.add_argument(
        "--extra-lora", type=_extra_lora, action="append", default=[], metavar="PATH[:WEIGHT]",
        help="another Wan LoRA (style, motion) jobs may stack on Pusa's, named after its file, at WEIGHT "
        f"(default {facts.DEFAULT_EXTRA_LORA_WEIGHT:g}) unless a job gives its own; repeat for more",
    )
    parser.add_argument(
        "--attention-backend", type=_attention_backend,
        default=os.environ.get("PUSA_ATTENTION_BACKEND", facts.DEFAULT_ATTENTION_BACKEND),
        help="diffusers attention backend (native, flash, sage, ... whichever is installed); env PUSA_ATTENTION_BACKEND",
    )
    parser.add_argument(
        "--compile", action="store_true", default=os.environ.get("PUSA_COMPILE", "") == "1",
        help="compile the transformer block with torch.compile (regional: once for all blocks); env PUSA_COMPILE=1",
    )
    parser.add_argument(
        TIMEOUT_FLAG, type=_collective_timeout, default=_env(TIMEOUT_ENV) or str(DEFAULT_TIMEOUT_SECONDS),
        metavar="SECONDS", help="under torchrun: how long a rank waits for the others before the job fails "
        f"with a message (a dead or stopped rank); default 300; env {TIMEOUT_ENV}",
    )
    args = parser.parse_args(argv)
    if args.preset not in facts.PRESETS:
        parser.error(f"PUSA_PRESET={args.preset!r} is not a preset; choose one of {', '.join(facts.PRESETS)}")
    if args.model not in MODELS:
        parser.error(f"PUSA_MODEL={args.model!r} is not a model; choose one of {', '.join(MODELS)}")
    return args


def small_model_notice(summary: str, fetch: str | None) -> str:
    """The header accordion's note on the small model; ``summary`` (the weights check) says what is missing."""
    fetch_line = (f"\n\nTo run the real model, fetch its weights and restart the app:\n\n```bash\n{fetch}\n```"
                  if fetch and fetch not in summary else "")
    return (
        "⚠️ **This is a small demo model, not Pusa V1 14B.** It was trained for about an hour on a CPU, on toy clips "
        "of one shape moving on a background (the words it knows are listed below): its videos are 64x64 and blurry, "
        f"and its shapes sometimes smear or fade.\n\n{summary}{fetch_line}"
    )


def random_model_notice(reason: str) -> str:
    return (
        "⚠️ **Running a random, untrained tiny model: its videos are noise.** It lets you try every part of the app "
        f"without any download.\n\n{reason}"
    )


def lora_catalog(args: argparse.Namespace, small: bool) -> LoraCatalog:
    """The LoRAs jobs may stack on Pusa's: LightX2V for Fast when it is on disk, and every --extra-lora."""
    extras = tuple(args.extra_lora)
    if small:
        return LoraCatalog(None, "the Fast preset's LightX2V LoRA is made for the 14B model, and this small model runs "
                           f"Quality only; to run Fast, fetch the 14B weights ({fetch_command(args.weights_dir)}) and "
                           f"the LoRA ({lightx2v_fetch_command(args.weights_dir)})", extras)
    path = find_lightx2v(args.weights_dir)
    if path is None:
        where = args.weights_dir / LIGHTX2V_DIRNAME / LIGHTX2V_FILENAME
        return LoraCatalog(None, f"the Fast preset needs the LightX2V LoRA of {LIGHTX2V_REPO_ID}, which is neither at "
                           f"{where} nor in the Hugging Face cache; fetch it with: "
                           f"{lightx2v_fetch_command(args.weights_dir)}", extras)
    return LoraCatalog(LoraSpec(LIGHTX2V_ADAPTER, path, facts.LIGHTX2V_WEIGHT), extras=extras)


def speed_options(args: argparse.Namespace, small: bool) -> SpeedOptions:
    """How jobs run: preset, stacked LoRAs, GPU options."""
    return SpeedOptions(args.preset, lora_catalog(args, small), args.attention_backend, args.compile)


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """What every engine takes from the flags: where outputs go, how long they are kept, how long a job may run."""
    return {
        "output_dir": args.output_dir,
        "retention": Retention(args.keep_outputs, args.keep_days),
        "max_job_seconds": args.max_job_seconds,
    }


def make_engine(args: argparse.Namespace, ranks: Ranks | None = None) -> tuple[Engine, str]:
    """The engine for the chosen model, and the notice the page shows about it (empty for the real model)."""
    choice = choose_engine(
        args.model, args.weights_dir, args.base_dir, args.lora, placement=args.placement, fp8=args.fp8,
        say=lambda text: print(text, flush=True), speed=lambda small: speed_options(args, small), ranks=ranks,
        **engine_options(args),
    )
    if choice.kind == "random":
        fetch = f"\n\n```bash\n{choice.fetch_command}\n```" if choice.fetch_command else ""
        return choice.engine, random_model_notice(choice.reason + fetch)
    notice = small_model_notice(choice.reason, choice.fetch_command) if choice.kind == "small" else ""
    return choice.engine, notice


def launch(demo: gr.Blocks, args: argparse.Namespace, block: bool = True) -> None:
    """Serve ``demo`` as the flags say; the GPU queue is shared by all tabs (see ui.runner.GPU_QUEUE)."""
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=args.auth,
        max_file_size=f"{args.max_upload_mb}mb",
        allowed_paths=[str(output_dir.resolve())],
        prevent_thread_lock=not block,
        show_error=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app; under torchrun rank 0 serves it and the other ranks run its jobs with it."""
    args = parse_args(argv)
    try:
        check_launch(args.placement, launched_ranks())
    except PusaInputError as err:
        sys.exit(f"pusa studio: {err}")
    ranks = Ranks.join(args.collective_timeout)
    try:
        engine, notice = make_engine(args, ranks)
    except (WeightsError, PusaInputError) as err:
        sys.exit(f"pusa studio: {err}")
    if not ranks.leader:
        # Ctrl-C ends this rank at once, even inside a collective; rank 0 ends with its own.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        engine.follow(say=ranks.say)
        return
    engine.start()
    try:
        launch(build_app(engine, notice, max_queue=args.max_queue), args)
    finally:
        ranks.leave()


if __name__ == "__main__":
    main()
