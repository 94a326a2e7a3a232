"""Print the memory plan of a Pusa job for the real 14B config, and its predicted step time.

    python -m pusa_core.plan --gpus 80,80 --size 832x480 --frames 81 [--placement X] [--fp8] [--cfg 1]
                             [--ranks N] [--link pcie4|nvlink]
    python -m pusa_core.plan --table            # README: one process (2x48, 2x24, 1x80, 1x24 GB)
    python -m pusa_core.plan --table parallel   # README: two GPUs (2x24, 2x48, 2x80 GB; cfg 5 and 1)

``--gpus`` simulates GPUs of the given GB; without it the visible GPUs are used. No weights are
read and no GPU is needed; the plan is computed on the meta device. ``--ranks``: the processes that
run each job (1: ``python app.py``; N: ``torchrun --nproc-per-node N``); without it the fastest
launch is chosen. The step time comes from the model in :mod:`pusa_core.placement.speed`.
Exit status: 0 when the plan fits, 1 when it is refused, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import PusaInputError
from .facts import (CFG, DEFAULT_CFG, DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, HD_HEIGHT, HD_WIDTH,
                    PUSA_LORA_RANK, SIZE_MULTIPLE, pass_flops)
from .placement import (DEFAULT_LINK, ENV_VAR, KINDS, LINKS, JobSize, MemoryPlan, Placement, PlanOptions, StepTime,
                        choose_placement, detect_gpus, gib, simulated_gpus)
from .placement.speed import ACHIEVED_FRACTION

TABLE_GPUS = ((48, 48), (24, 24), (80,), (24,))
TABLE_SIZES = ((DEFAULT_WIDTH, DEFAULT_HEIGHT), (HD_WIDTH, HD_HEIGHT))
TABLE_FRAMES = DEFAULT_FRAMES
PARALLEL_TABLE_GPUS = ((24, 24), (48, 48), (80, 80))
PARALLEL_TABLE_CFGS = (DEFAULT_CFG, 1.0)
COLUMNS = ("transformer", "lora", "text encoder", "vae")


def _parse_gpus(text: str) -> list[float]:
    try:
        sizes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: give GPU sizes in GB separated by commas, e.g. 48,48")
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: give positive GPU sizes in GB, e.g. 48,48")
    return sizes


def _cfg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cfg {text!r}: give a number {CFG.span()}, e.g. 5 or 1")
    if (problem := CFG.check(value)) is not None:
        raise argparse.ArgumentTypeError(f"--cfg {problem}")
    return value


def _bytes(n: int) -> str:
    """Bytes in decimal units, as link bandwidths are given."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def describe_speed(time: StepTime, cfg: float, tokens: int) -> list[str]:
    """The predicted step time and the model behind it, as lines."""
    passes = 2 if cfg > 1 else 1
    gpu, link = time.gpu, time.link
    lines = [
        f"Predicted step: {time.ratio:.2f}x one GPU's ({time.seconds:.1f} s against {time.one_gpu_s:.1f} s)",
        f"  model: {passes} pass{'es' if passes > 1 else ''} a step (cfg {cfg:g}) of {pass_flops(tokens) / 1e15:.2f} "
        f"PFLOP each; {gpu.name} class at {ACHIEVED_FRACTION:.0%} of {gpu.bf16_tflops:g} TFLOP/s bf16; "
        f"{link.name} at {link.bytes_per_s / 1e9:g} GB/s and {link.latency_s * 1e6:g} us a collective",
        f"  compute {time.compute_s:.2f} s, communication {time.comm_s * 1e3:.1f} ms "
        f"({_bytes(time.link_bytes)} per link a step)",
    ]
    lines += [f"  {c.name}: {c.count} a step, {_bytes(c.bytes)}" for c in time.collectives]
    return lines


def describe(placement: Placement, cfg: float = DEFAULT_CFG, link: str = DEFAULT_LINK) -> str:
    """The plan as a text table: what goes where, GiB per device, peak, verdict and predicted step time."""
    plan = placement.memory
    job, sizes, options = plan.job, plan.sizes, plan.options
    lora_dtype = "fp32" if options.weights == "fp32" else "bf16"
    merged = "merged" if options.lora_merged else "unfused"
    lora = f"LoRA rank {options.lora_rank} ({lora_dtype}, {merged})" if options.lora_rank else "no LoRA"
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
    if placement.cfg_degree * placement.sequence_degree > 1:
        lines.insert(3, f"Ranks: cfg degree {placement.cfg_degree} x sequence degree {placement.sequence_degree}")
    lines += [f"  problem: {p}" for p in plan.problems]
    lines += [f"  try: {s}" for s in plan.suggestions]
    time = placement.step_time(cfg, link)
    if time is not None:
        lines += ["", *describe_speed(time, cfg, job.tokens)]
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


def _parallel_row(gpus: tuple[float, ...], job: JobSize, cfg: float, options: PlanOptions) -> str:
    placement = choose_placement(simulated_gpus(gpus), job, options=options, simulated=True, cfg=cfg, ranks=None)
    plan = placement.memory
    gpu_devices = [d for d in plan.devices if d.budget is not None]
    pcie, nvlink = placement.step_time(cfg, "pcie4"), placement.step_time(cfg, "nvlink")
    assert pcie is not None and nvlink is not None  # GPU placements have a step time
    kind = plan.kind + (" (fp8)" if placement.fp8 else "")
    ranks = "1 process" if plan.kind in ("shard", "single", "offload") else f"{placement.cfg_degree} x {placement.sequence_degree}"
    return (f"| {len(gpus)}x{gpus[0]:g} GB | {job.width}x{job.height} | {cfg:g} | {kind} | {ranks} "
            f"| {' / '.join(gib(d.peak) for d in gpu_devices)} | {pcie.ratio:.2f} / {nvlink.ratio:.2f} "
            f"| {_bytes(pcie.link_bytes)} | {plan.verdict} |")


def parallel_table(options: PlanOptions) -> str:
    """The README table for two GPUs: what auto picks with either launch, peak, step time, bytes per link."""
    lines = [
        f"| GPUs | size ({TABLE_FRAMES} frames) | cfg | placement | cfg x sequence ranks | peak GiB per GPU "
        "| step vs 1 GPU, PCIe 4 / NVLink | per step per link | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for gpus in PARALLEL_TABLE_GPUS:
        for w, h in TABLE_SIZES:
            for cfg in PARALLEL_TABLE_CFGS:
                lines.append(_parallel_row(gpus, JobSize(w, h, TABLE_FRAMES), cfg, options))
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
    parser.add_argument("--cfg", type=_cfg, default=DEFAULT_CFG,
                        help=f"guidance scale: 1 runs one pass a step, more runs two (default {DEFAULT_CFG:g})")
    parser.add_argument("--ranks", type=int, help="processes per job, one GPU each: 1 for python app.py, N for "
                                                  "torchrun --nproc-per-node N (default: the fastest)")
    parser.add_argument("--link", choices=tuple(LINKS), default=DEFAULT_LINK,
                        help=f"what joins the GPUs, for the step time (default {DEFAULT_LINK})")
    parser.add_argument("--table", nargs="?", const="placement", choices=("placement", "parallel"),
                        help="print a README table: placement (one process, the default) or parallel (two GPUs)")
    args = parser.parse_args(argv)
    try:
        options = PlanOptions(weights="fp8" if args.fp8 else "bf16", lora_rank=args.lora_rank)
        if args.table:
            print(table(options) if args.table == "placement" else parallel_table(options))
            return 0
        job = JobSize.parse(args.size, args.frames)
        gpus = simulated_gpus(args.gpus) if args.gpus else detect_gpus()
        placement = choose_placement(gpus, job, requested=args.placement, options=options,
                                     simulated=bool(args.gpus), cfg=args.cfg, ranks=args.ranks, link=args.link)
    except PusaInputError as err:
        parser.error(str(err))
    print(describe(placement, args.cfg, args.link))
    return 0 if placement.memory.verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
