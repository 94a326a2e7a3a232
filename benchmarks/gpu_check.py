"""The 14B on a real GPU with random weights: step time, achieved TFLOP/s, and the planner's peak
against CUDA's; under torchrun, the speedup of each parallel placement.

    python benchmarks/gpu_check.py                               # one GPU of 80 GB or more, < 8 minutes
    torchrun --nproc-per-node 2 benchmarks/gpu_check.py          # adds cfg-parallel and sequence-parallel
    python benchmarks/gpu_check.py --device cpu --config tiny.json --size 64x64 --frames 9   # code paths only

Nothing is downloaded: the transformer is built from ``pusa_core/configs`` on the meta device with
the dtypes a real load gives it (bf16; fp32 where diffusers keeps fp32; the Pusa LoRA at
``--lora-rank``, unfused), then materialised on the GPU with random weights.

Prints, at 832x480x81 by default:

* seconds per pass and per step (cfg 5: two passes) and achieved TFLOP/s
  (:func:`pusa_core.facts.pass_flops`, the 14B without its LoRA) with a scalar timestep ``[1]``
  and with per-frame timesteps ``[1, F]`` (Pusa), each the mean of ``--repeats`` passes after a warm-up;
* the planner's weights and one pass's activations against ``torch.cuda.memory_allocated`` after
  the build and ``torch.cuda.max_memory_allocated`` over the passes;
* seconds per per-frame pass with the LoRA merged into the weights (peft's ``merge``, as the engine
  runs it) against unmerged, the merged-LoRA gain, and the Quality and Fast presets' seconds per job
  (:func:`preset_jobs`: their steps x passes, times the measured pass; Fast's LightX2V adapter merges
  into the same weights, so a merged pass costs the same under both);
* under torchrun: seconds per sampler step (median of the steps after the first) on one GPU and
  under cfg-parallel and sequence-parallel, the speedup, the speed model's prediction over PCIe 4
  and NVLink, and rank 0's measured peak against the planner's.

Exit status 1, with a message, when no CUDA GPU is visible or the job is predicted not to fit.
"""

from __future__ import annotations

import argparse
import sys

import torch

if __name__ == "__main__":
    # Before importing diffusers (seconds): a machine without a GPU gets its answer at once.
    _early = argparse.ArgumentParser(add_help=False)
    _early.add_argument("--device", default="cuda")
    if _early.parse_known_args()[0].device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False). It needs one GPU "
                 "with 80 GB or more, or two or more under torchrun; `--device cpu --config SMALL.json` runs "
                 "its code paths on the CPU instead.")

import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402

from pusa_core.cache_choice import full_passes  # noqa: E402
from pusa_core.facts import DEFAULT_CFG, FAST, PRESETS, PUSA_LORA_RANK, QUALITY, TEXT_TOKENS, pass_flops  # noqa: E402
from pusa_core.loading import TRANSFORMER_14B_CONFIG, read_config  # noqa: E402
from pusa_core.parallel import init_group, parallel_guidance  # noqa: E402
from pusa_core.placement import GIB, JobSize, PlanOptions, gib, plan_memory, simulated_gpus  # noqa: E402
from pusa_core.placement.models import build_meta_transformer  # noqa: E402
from pusa_core.placement.speed import LINKS, Layout, gpu_class, step_time  # noqa: E402
from pusa_core.requests import Settings, preset_settings  # noqa: E402
from pusa_core.sampling import StepReport, sample  # noqa: E402
from pusa_core.schedule import frame_multipliers  # noqa: E402
from pusa_core.transformer import PusaTransformer3DModel  # noqa: E402

WEIGHT_STD = 0.02  # random weights of a trained transformer's scale, so activations stay finite


def build(config: dict[str, Any], device: torch.device, lora_rank: int) -> PusaTransformer3DModel:
    """The transformer with random weights on ``device``, built on the meta device first (no host copy)."""
    model = build_meta_transformer(config, "bf16", lora_rank)
    model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, WEIGHT_STD, generator=generator)
    # The rotary tables are buffers computed at construction; to_empty left them uninitialised.
    model.rope = type(model.rope)(config["attention_head_dim"], tuple(config["patch_size"]),
                                  config["rope_max_seq_len"]).to(device)
    return model.eval().requires_grad_(False)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inputs(config: dict[str, Any], job: JobSize, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random latents ``[1, 16, F, H/8, W/8]`` and text states ``[1, 512, text_dim]`` in bf16."""
    g = torch.Generator(device).manual_seed(1)
    latents = torch.randn(1, config["in_channels"], job.latent_frames, job.height // 8, job.width // 8,
                          generator=g, device=device, dtype=torch.bfloat16)
    text = torch.randn(1, TEXT_TOKENS, config["text_dim"], generator=g, device=device, dtype=torch.bfloat16)
    return latents, text


def time_passes(model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                repeats: int) -> float:
    """Mean seconds of ``repeats`` passes after one warm-up pass."""
    with torch.no_grad():
        model(latents, timestep, text, return_dict=False)
        synchronize(latents.device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(latents, timestep, text, return_dict=False)
        synchronize(latents.device)
    return (time.perf_counter() - start) / repeats


def timed_steps(model: torch.nn.Module, noise: torch.Tensor, text: torch.Tensor, steps: int, cfg: float,
                guidance: Any = None) -> float:
    """Median seconds of the sampler's steps after the first."""
    ends: list[float] = []

    def callback(report: StepReport) -> None:
        synchronize(noise.device)
        ends.append(report.seconds)

    with torch.no_grad():
        sample(model, noise, {}, frame_multipliers(noise.shape[2], {}), text, text.flip(1), steps, cfg,
               callback=callback, guidance=guidance)
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


def preset_jobs(quality: Settings | None = None) -> list[tuple[str, int, float, int]]:
    """(preset, steps, cfg, transformer passes) of the default job under each preset."""
    quality = quality or Settings()
    jobs = []
    for preset in PRESETS:
        s = preset_settings(quality, preset)
        jobs.append((preset, s.steps, s.cfg, full_passes(s.steps, s.cfg, None)))
    return jobs


def set_merged(model: torch.nn.Module, merged: bool) -> int:
    """Merge (or unmerge) every peft LoRA layer's adapter into its weights; returns how many layers."""
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        if merged and not layer.merged:
            layer.merge()
        elif not merged and layer.merged:
            layer.unmerge()
    return len(layers)


def preset_lines(jobs: list[tuple[str, int, float, int]], unmerged_s: float, merged_s: float) -> list[str]:
    """Seconds per job of each preset from the measured seconds per pass, and the merged-LoRA gain."""
    lines = ["| preset | steps | cfg | passes | s / job, LoRA unmerged | s / job, LoRA merged |",
             "|---|---|---|---|---|---|"]
    for preset, steps, cfg, passes in jobs:
        lines.append(f"| {preset} | {steps} | {cfg:g} | {passes} | {passes * unmerged_s:.1f} | {passes * merged_s:.1f} |")
    per_job = {preset: passes * merged_s for preset, _, _, passes in jobs}
    lines.append(f"Merged LoRA: {merged_s:.2f} s / pass against {unmerged_s:.2f} unmerged ({unmerged_s / merged_s:.2f}x); "
                 f"{QUALITY} / {FAST} per job (merged): {per_job[QUALITY] / per_job[FAST]:.1f}x")
    return lines


class Peak:
    """``torch.cuda.max_memory_allocated`` over a block of work, in bytes (None on the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, None

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)


def planned(kind: str, job: JobSize, options: PlanOptions, gpu_gb: float, ranks: int,
            stage: Callable[[Any], int]) -> int:
    """Rank 0's planned transformer + LoRA weights plus ``stage`` of the plan's activations."""
    plan = plan_memory(kind, simulated_gpus([gpu_gb] * ranks), job, options, simulated=True, suggest=False)
    rank0 = plan.devices[0]
    return rank0.weights["transformer"] + rank0.weights.get("lora", 0) + stage(plan)


def single_gpu_report(model: torch.nn.Module, config: dict[str, Any], job: JobSize, options: PlanOptions,
                      weights_bytes: int | None, gpu_gb: float, args: argparse.Namespace) -> list[str]:
    device = next(model.parameters()).device
    latents, text = inputs(config, job, device)
    frames = job.latent_frames
    timesteps = {"scalar [1]": torch.tensor([500.0], device=device),
                 f"per-frame [1, {frames}]": torch.linspace(1000.0, 0.0, frames, device=device)[None]}
    flops = pass_flops(job.tokens) if args.is_14b else None
    lines = [f"| timesteps | s / pass | s / step (cfg {DEFAULT_CFG:g}) | TFLOP/s |", "|---|---|---|---|"]
    with Peak(device) as peak:
        for name, timestep in timesteps.items():
            seconds = time_passes(model, latents, timestep, text, args.repeats)
            rate = f"{flops / seconds / 1e12:.0f}" if flops else "- (not the 14B)"
            lines.append(f"| {name} | {seconds:.2f} | {2 * seconds:.2f} | {rate} |")
    per_frame = timesteps[f"per-frame [1, {frames}]"]
    unmerged = time_passes(model, latents, per_frame, text, args.repeats)
    if set_merged(model, True):
        merged = time_passes(model, latents, per_frame, text, args.repeats)
        set_merged(model, False)  # the parallel runs below time the model as built
    else:
        merged = unmerged  # no LoRA layers: nothing to merge
    presets = ["", *preset_lines(preset_jobs(), unmerged, merged)]
    plan_weights = planned("single", job, options, gpu_gb, 1, lambda p: 0)
    plan_peak = planned("single", job, options, gpu_gb, 1, lambda p: p.activations.transformer)
    lines += ["", f"Weights: planned {gib(plan_weights)} GiB, memory_allocated after the build "
                  f"{gib(weights_bytes)} GiB",
              f"Peak over the passes: planned {gib(plan_peak)} GiB (weights + one pass's activations), "
              f"max_memory_allocated {gib(peak.bytes)} GiB"]
    return lines + presets


def parallel_report(models: list[PusaTransformer3DModel], config: dict[str, Any], job: JobSize,
                    options: PlanOptions, gpu_gb: float, args: argparse.Namespace) -> list[str]:
    """Every rank runs this; rank 0 returns the table. ``models`` holds the one transformer, so that a
    rebuild (context parallelism is set up once per model) frees the previous one first."""
    world, rank = dist.get_world_size(), dist.get_rank()
    device = next(models[0].parameters()).device
    noise, text = inputs(config, job, device)
    noise = noise.float()
    single: dict[float, float] = {}
    lines = ["| placement | cfg x sequence ranks | cfg | s / step | speedup | predicted, PCIe 4 / NVLink "
             "| rank 0 peak GiB | planned GiB |", "|---|---|---|---|---|---|---|---|"]

    def stage(plan: Any) -> int:
        return plan.devices[0].stages["denoise"]

    if rank == 0:
        for cfg in (DEFAULT_CFG, 1.0):
            with Peak(device) as peak:
                single[cfg] = timed_steps(models[0], noise, text, args.steps, cfg)
            lines.append(f"| one GPU | 1 x 1 | {cfg:g} | {single[cfg]:.2f} | 1.00 | - | {gib(peak.bytes)} "
                         f"| {gib(planned('single', job, options, gpu_gb, 1, stage))} |")
    dist.barrier()
    runs = ([("cfg-parallel", 2, world // 2, (DEFAULT_CFG,))] if world % 2 == 0 else []) + \
        [("sequence-parallel", 1, world, (DEFAULT_CFG, 1.0))]
    for kind, cfg_degree, sequence_degree, cfgs in runs:
        if models[0]._parallel_config is not None:
            models.clear()
            models.append(build(config, device, args.lora_rank))
        guidance = parallel_guidance(models[0], cfg_degree=cfg_degree, sequence_degree=sequence_degree)
        for cfg in cfgs:
            with Peak(device) as peak:
                seconds = timed_steps(models[0], noise, text, args.steps, cfg, guidance)
            layout = Layout(kind, cfg_degree, sequence_degree)
            predicted = " / ".join(
                f"{1 / step_time(layout, job.width, job.height, job.frames, cfg, gpu_class(gpu_gb), LINKS[link]).ratio:.2f}"
                for link in ("pcie4", "nvlink")) if args.is_14b else "-"
            if rank == 0:
                lines.append(f"| {kind} | {cfg_degree} x {sequence_degree} | {cfg:g} | {seconds:.2f} "
                             f"| {single[cfg] / seconds:.2f} | {predicted} | {gib(peak.bytes)} "
                             f"| {gib(planned(kind, job, options, gpu_gb, world, stage))} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=TRANSFORMER_14B_CONFIG,
                        help="transformer config JSON (default: Wan2.1-T2V-14B's)")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--lora-rank", type=int, default=PUSA_LORA_RANK, help="0: no LoRA")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per timestep kind")
    parser.add_argument("--steps", type=int, default=3, help="sampler steps per run under torchrun (at least 2)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be at least 2 (the first is a warm-up) and --repeats at least 1")
    args.is_14b = args.config.resolve() == TRANSFORMER_14B_CONFIG.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = read_config(args.config)
    job = JobSize.parse(args.size, args.frames)
    options = PlanOptions(transformer_config=config, lora_rank=args.lora_rank)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        device = init_group()
    else:
        device = torch.device(args.device)
    rank = dist.get_rank() if world > 1 else 0
    gpu_gb = torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else 80.0
    check = plan_memory("single", simulated_gpus([gpu_gb]), job, options, simulated=True, suggest=False)
    needed = check.sizes.transformer + check.sizes.lora + check.activations.transformer + check.activations.sampler
    if needed > check.devices[0].budget:
        print(f"gpu_check: {job} needs about {gib(needed)} GiB for the transformer and one pass, and this "
              f"{gpu_gb:.0f} GiB GPU has {gib(check.devices[0].budget)} to plan with; use a larger GPU or --size",
              file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    models = [build(config, device, args.lora_rank)]
    synchronize(device)
    weights_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    out = [f"{name}, {gpu_gb:.0f} GiB; {args.config.name}, LoRA rank {args.lora_rank}; {job} "
           f"({job.tokens} tokens); torch {torch.__version__}", ""]
    if rank == 0:
        out += single_gpu_report(models[0], config, job, options, weights_bytes, gpu_gb, args)
    if world > 1:
        dist.barrier()
        out += ["", *parallel_report(models, config, job, options, gpu_gb, args)]
        dist.destroy_process_group()
    if rank == 0:
        print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
