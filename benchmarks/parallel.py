"""Single vs cfg-parallel vs sequence-parallel on the CPU at equal total threads: step time as ratios,
and the bytes each collective moves per step.

    python benchmarks/parallel.py [--blocks 2] [--steps 3] [--size 832x480] [--frames 5]

A mid-size Wan config (dim 1536, 12 heads of 128, FFN 8960: Wan2.1-1.3B's block, ``--blocks`` of
them), random float32 weights, 832x480x5 = 3,120 tokens. Two launches, each in fresh processes:

* one process with 2 threads (and 1 thread, for the CPU's thread scaling): the plain sampler;
* two processes with 1 thread each, on gloo through :mod:`pusa_core.parallel`: cfg-parallel,
  then sequence-parallel (Ulysses) at cfg 5 and cfg 1.

Step time: the median of the steps after the first, from the sampler's callback. Bytes: measured,
by a TorchDispatchMode on rank 0 that sees every collective op and adds up what this rank sends
(all-to-all: the N-1 parts of its buffer it does not keep; all-gather: its input to each of the
N-1 others; all-reduce: its input); printed next to what :mod:`pusa_core.placement.speed`'s
formulas give for these shapes. The CPU's compute to communication balance is nothing like a GPU's
over PCIe or NVLink: the ratios show that the work is split, the model's bytes are checked here,
and ``python -m pusa_core.plan`` predicts GPU step times.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pusa_core.facts import latent_frame_count  # noqa: E402
from pusa_core.parallel import init_group, parallel_guidance  # noqa: E402
from pusa_core.placement.speed import Layout, Shapes, step_collectives  # noqa: E402
from pusa_core.sampling import StepReport, sample  # noqa: E402
from pusa_core.schedule import frame_multipliers  # noqa: E402
from pusa_core.tiny_models import TINY_TRANSFORMER  # noqa: E402
from pusa_core.transformer import PusaTransformer3DModel  # noqa: E402

MID = {**TINY_TRANSFORMER, "num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960,
       "text_dim": 4096, "freq_dim": 256}
TEXT_TOKENS = 512
CFG = 5.0
# (name, cfg degree, sequence degree, cfg) run by the two-process launch, in this order.
PARALLEL_RUNS = (("cfg-parallel", 2, 1, CFG), ("sequence-parallel", 1, 2, CFG), ("sequence-parallel", 1, 2, 1.0))


class CollectiveBytes(TorchDispatchMode):
    """Counts the collective ops this rank runs and the bytes it sends in them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.name()
        if name.startswith(("c10d::", "_c10d_functional::")) and "wait_tensor" not in name and "wrap_tensor" not in name:
            self.calls[name] += 1
            self.bytes[name] += _sent_bytes(name, args, dist.get_world_size())
        return func(*args, **(kwargs or {}))


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return sum(_nbytes(v) for v in value) if isinstance(value, (list, tuple)) else 0


def _sent_bytes(name: str, args: tuple, world: int) -> int:
    """What this rank sends in one collective (its own input; see the module's docstring)."""
    if "all_to_all" in name or "alltoall" in name:
        return _nbytes(args[0]) * (world - 1) // world
    if "all_gather" in name:  # functional: (input, group size, group)
        return _nbytes(args[0]) * (world - 1)
    if "allgather" in name:  # c10d: (outputs, inputs, ...)
        return _nbytes(args[1]) * (world - 1)
    return _nbytes(args[0])  # all-reduce, broadcast: the tensors given


def build(blocks: int) -> PusaTransformer3DModel:
    torch.manual_seed(0)
    return PusaTransformer3DModel(**{**MID, "num_layers": blocks}).eval()


def inputs(width: int, height: int, frames: int, steps: int, cfg: float) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    latent_frames = latent_frame_count(frames)
    noise = torch.randn(1, 16, latent_frames, height // 8, width // 8, generator=g)
    text = [torch.randn(1, TEXT_TOKENS, MID["text_dim"], generator=g) for _ in range(2)]
    return dict(noise=noise, cond_latents={}, multipliers=frame_multipliers(latent_frames, {}),
                positive=text[0], negative=text[1], steps=steps, cfg=cfg)


def timed_sample(model: torch.nn.Module, job: dict[str, Any], guidance: Any = None) -> float:
    """Median seconds of the steps after the first."""
    ends: list[float] = []

    def callback(report: StepReport) -> None:
        ends.append(report.seconds)

    with torch.no_grad():
        sample(model, **job, callback=callback, guidance=guidance)
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


def one_process(_: int, out: Path, args: argparse.Namespace) -> None:
    model = build(args.blocks)
    size = (args.width, args.height, args.frames)
    results = {}
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for cfg in ((CFG, 1.0) if threads == 2 else (1.0,)):
            results[("single", threads, cfg)] = timed_sample(model, inputs(*size, args.steps, cfg))
    torch.save(results, out / "single.pt")


def rank_main(rank: int, port: int, out: Path, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    init_group(f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(minutes=10))
    size = (args.width, args.height, args.frames)
    results: dict[Any, Any] = {}
    for name, cfg_degree, sequence_degree, cfg in PARALLEL_RUNS:
        model = build(args.blocks)
        guidance = parallel_guidance(model, cfg_degree=cfg_degree, sequence_degree=sequence_degree)
        counter = CollectiveBytes()
        with counter:
            seconds = timed_sample(model, inputs(*size, args.steps, cfg), guidance)
        results[(name, 1, cfg)] = seconds
        results[("bytes", name, cfg)] = ({k: v / args.steps for k, v in counter.calls.items()},
                                          {k: v / args.steps for k, v in counter.bytes.items()})
    if rank == 0:
        torch.save(results, out / "parallel.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layout(name: str) -> Layout:
    return Layout(name, cfg_degree=2) if name == "cfg-parallel" else Layout(name, sequence_degree=2)


def report(results: dict[Any, Any], args: argparse.Namespace) -> str:
    tokens = latent_frame_count(args.frames) * (args.height // 16) * (args.width // 16)
    lines = [
        f"Mid-size Wan config: dim 1536 (12 heads x 128), FFN 8960, {args.blocks} blocks, float32; "
        f"{args.width}x{args.height}x{args.frames} = {tokens} tokens, {args.steps} steps (median of the last "
        f"{args.steps - 1}); torch {torch.__version__}",
        "",
        "| run | processes x threads | cfg | s / step | vs single, 2 threads |",
        "|---|---|---|---|---|",
    ]
    rows = [("single", 2, CFG, "1 x 2"), ("cfg-parallel", 1, CFG, "2 x 1"), ("sequence-parallel", 1, CFG, "2 x 1"),
            ("single", 2, 1.0, "1 x 2"), ("sequence-parallel", 1, 1.0, "2 x 1"), ("single", 1, 1.0, "1 x 1")]
    for name, threads, cfg, layout in rows:
        seconds, base = results[(name, threads, cfg)], results[("single", 2, cfg)]
        lines.append(f"| {name} | {layout} | {cfg:g} | {seconds:.2f} | {seconds / base:.2f} |")
    lines += ["", "Bytes one rank sends per step, measured (TorchDispatchMode on rank 0) and from the speed model's "
              "formulas for these shapes (float32):", "",
              "| run | cfg | collective op | calls / step | measured | model |", "|---|---|---|---|---|---|"]
    shapes = Shapes(dim=1536, layers=args.blocks, head_dim=128, element_bytes=4)
    for name, _, _, cfg in PARALLEL_RUNS:
        calls, sent = results[("bytes", name, cfg)]
        model = step_collectives(_layout(name), args.width, args.height, args.frames, cfg, shapes)
        predicted = ", ".join(f"{c.name}: {c.count} x, {c.bytes:,} B" for c in model)
        lines.append(f"| {name} | {cfg:g} | | | {sum(sent.values()):,.0f} B | {sum(c.bytes for c in model):,} B |")
        lines += [f"| | | {op} | {calls[op]:g} | {sent[op]:,.0f} B | |" for op in sorted(calls)]
        lines.append(f"| | | model: {predicted} | | | |")
    lines += ["", f"Measured all-reduces include the job's final stop-code agreement (one a job: "
                  f"1/{args.steps} a step here), which the per-step model leaves out."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="at least 2: the first step is not timed")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=5)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up")
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        # Fresh processes for both launches, one after the other, so they never share the cores.
        mp.start_processes(one_process, args=(out, args), nprocs=1, start_method="spawn")
        mp.start_processes(rank_main, args=(_free_port(), out, args), nprocs=2, start_method="spawn")
        results = {**torch.load(out / "single.pt"), **torch.load(out / "parallel.pt")}
    print(report(results, args))


if __name__ == "__main__":
    main()
