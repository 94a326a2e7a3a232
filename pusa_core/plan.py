"""Print the memory plan of a Pusa job for the real 14B config, computed on the meta device.

    python -m pusa_core.plan --gpus 48,48 --size 1280x720 --frames 81 [--placement X] [--fp8]
    python -m pusa_core.plan --table          # the README table (2x48, 2x24, 1x80, 1x24 GB; 480p, 720p)

``--gpus`` simulates GPUs of the given GB; without it the visible GPUs are used. No weights are
read and no GPU is needed. Exit status: 0 when the plan fits, 1 when it is refused, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import PusaInputError
from .facts import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, HD_HEIGHT, HD_WIDTH, PUSA_LORA_RANK, SIZE_MULTIPLE
from .placement import (ENV_VAR, KINDS, JobSize, MemoryPlan, Placement, PlanOptions, choose_placement, detect_gpus,
                        gib, simulated_gpus)

TABLE_GPUS = ((48, 48), (24, 24), (80,), (24,))
TABLE_SIZES = ((DEFAULT_WIDTH, DEFAULT_HEIGHT), (HD_WIDTH, HD_HEIGHT))
TABLE_FRAMES = DEFAULT_FRAMES
COLUMNS = ("transformer", "lora", "text encoder", "vae")


def _parse_gpus(text: str) -> list[float]:
    try:
        sizes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: give GPU sizes in GB separated by commas, e.g. 48,48")
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: give positive GPU sizes in GB, e.g. 48,48")
    return sizes


def describe(placement: Placement) -> str:
    """The plan as a text table: what goes where, GiB per device, peak and verdict."""
    plan = placement.memory
    job, sizes, options = plan.job, plan.sizes, plan.options
    lora_dtype = "fp32" if options.weights == "fp32" else "bf16"
    lora = f"LoRA rank {options.lora_rank} ({lora_dtype}, unfused)" if options.lora_rank else "no LoRA"
    lines = [
        f"Job: {job} -> {job.latent_frames} latent frames x {job.height // SIZE_MULTIPLE} x "
        f"{job.width // SIZE_MULTIPLE} = {job.tokens} tokens",
        f"Model: Wan2.1-T2V-14B transformer {gib(sizes.transformer)} GiB ({options.weights}, {sizes.num_blocks} blocks), "
        f"{lora} {gib(sizes.lora)} GiB, umT5-XXL {gib(sizes.text_encoder)} GiB, VAE {gib(sizes.vae)} GiB "
        f"({options.vae_dtype})",
        f"Placement: {placement.kind} - {placement.reason}",
        "",
        f"{'device':<8} {'name':<22} {'transformer':>11} {'LoRA':>6} {'text enc':>8} {'VAE':>5} "
        f"{'activ.':>6} {'peak':>6} {'budget':>6}  holds",
    ]
    for d in plan.devices:
        cells = " ".join(f"{gib(d.weights.get(c)):>{w}}" for c, w in zip(COLUMNS, (11, 6, 8, 5)))
        lines.append(f"{d.device:<8} {d.name[:22]:<22} {cells} {gib(d.activations):>6} {gib(d.peak):>6} "
                     f"{gib(d.budget):>6}  {', '.join(d.notes)}")
    acts = plan.activations
    top = plan.peak_device
    budget = f" (budget {gib(top.budget)} GiB)" if top.budget is not None else " (host memory: not checked)"
    lines += [
        "",
        f"Activations: per-frame modulation {acts.modulation / 2**20:.1f} MiB, one block {gib(acts.block)} GiB, "
        f"hidden states and rotary tables {gib(acts.stream)} GiB, VAE decode "
        f"{gib(acts.vae_decode_tiled if plan.vae_tiling else acts.vae_decode)} GiB"
        f"{' (tiled)' if plan.vae_tiling else ''}",
        f"Predicted peak: {gib(top.peak)} GiB on {top.device}{budget}",
        f"Verdict: {plan.verdict}",
    ]
    lines += [f"  problem: {p}" for p in plan.problems]
    lines += [f"  try: {s}" for s in plan.suggestions]
    return "\n".join(lines)


def _table_row(gpus: tuple[float, ...], job: JobSize, options: PlanOptions) -> str:
    placement = choose_placement(simulated_gpus(gpus), job, options=options, simulated=True)
    plan: MemoryPlan = placement.memory
    gpu_devices = [d for d in plan.devices if d.budget is not None]
    split = " / ".join(str(len(d.blocks)) if d.blocks else "streamed" for d in gpu_devices)
    per_device = " / ".join(f"{gib(d.peak)}" for d in gpu_devices)
    budgets = " / ".join(f"{gib(d.budget)}" for d in gpu_devices)
    extras = f"text enc {plan.text_device}{' streamed' if plan.text_streamed else ''}, VAE {plan.vae_device}"
    extras += " tiled" if plan.vae_tiling else ""
    name = f"{len(gpus)}x{gpus[0]:g} GB"
    return (f"| {name} | {job.width}x{job.height} | {plan.kind} | {split} | {extras} | {per_device} | {budgets} "
            f"| {plan.verdict} |")


def table(options: PlanOptions) -> str:
    """The README table: placement, split, per-GPU peak for the standard cases."""
    lines = [
        f"| GPUs | size ({TABLE_FRAMES} frames) | placement | blocks per GPU | text encoder, VAE "
        "| peak GiB per GPU | budget GiB | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for gpus in TABLE_GPUS:
        for w, h in TABLE_SIZES:
            lines.append(_table_row(gpus, JobSize(w, h, TABLE_FRAMES), options))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pusa_core.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=_parse_gpus, help="simulate GPUs of these GB, e.g. 48,48 (default: detect)")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT, multiples of 16 (default 1280x720)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"pixel frames, 4k+1 (default {DEFAULT_FRAMES})")
    parser.add_argument("--placement", choices=("auto",) + KINDS, default=os.environ.get(ENV_VAR),
                        help=f"override the automatic choice (also env {ENV_VAR})")
    parser.add_argument("--fp8", action="store_true", help="store the transformer weights in fp8")
    parser.add_argument("--lora-rank", type=int, default=PUSA_LORA_RANK,
                        help=f"LoRA rank, 0 for none or fused (default {PUSA_LORA_RANK})")
    parser.add_argument("--table", action="store_true", help="print the README table of standard cases")
    args = parser.parse_args(argv)
    try:
        options = PlanOptions(weights="fp8" if args.fp8 else "bf16", lora_rank=args.lora_rank)
        if args.table:
            print(table(options))
            return 0
        job = JobSize.parse(args.size, args.frames)
        gpus = simulated_gpus(args.gpus) if args.gpus else detect_gpus()
        placement = choose_placement(gpus, job, requested=args.placement, options=options,
                                     simulated=bool(args.gpus))
    except PusaInputError as err:
        parser.error(str(err))
    print(describe(placement))
    return 0 if placement.memory.verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
