"""How far the reference's sigma lookup is from this engine's when every latent frame is conditioned.

    python benchmarks/all_conditioned_sigma.py [--golden PATH] [--multiplier 0.5] [--steps N]

This engine puts frame f at sigma ``m_f * s_i`` at step i. The reference scheduler
(``FlowMatchSchedulerPusaV2V.step``) looks the step's sigma up from the largest frame timestep
(nearest scheduler timestep to ``1000 * max(m) * s_i``, step j) and scales it by m_f, so it
integrates from ``m_f * s_j`` to ``m_f * s_(j+1)``, and it noises a conditioning frame at the first
step with ``m_f * s_j`` as well. While any frame has m = 1 that is step i and the rules agree.

Runs the golden file's tiny transformer (LoRA at its first case's alpha; its noise, contexts, cfg,
and steps unless --steps) with every frame conditioned on a seeded random clean latent, under both
rules, and prints the per-step sigmas, the max abs latent difference, and the same with one frame
left free (which must print 0). Then prints the largest per-step sigma difference over multipliers 0.05..0.95
at 10 steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pusa_core.facts import DEFAULT_SHIFT  # noqa: E402
from pusa_core.loading import transformer_from_original_state_dict  # noqa: E402
from pusa_core.lora import load_lora  # noqa: E402
from pusa_core.sampling import guided_velocity, sample  # noqa: E402
from pusa_core.schedule import frame_timesteps, noised_conditioning, shifted_sigmas  # noqa: E402
from pusa_core.verify import golden_transformer_config  # noqa: E402

GOLDEN = ROOT.parent / "shared" / "golden" / "pusa_golden_v1.safetensors"


def reference_steps(steps: int, multipliers: torch.Tensor, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The reference's step index j per step i: the scheduler timestep nearest the largest frame timestep."""
    table = shifted_sigmas(steps, shift)[:-1]  # the reference's timesteps / 1000 (no final 0)
    largest = multipliers.max() * table
    return (table[None, :] - largest[:, None]).abs().argmin(dim=1)


def reference_rule_sample(model: torch.nn.Module, noise: torch.Tensor, clean: dict[int, torch.Tensor],
                          multipliers: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                          steps: int, cfg: float) -> torch.Tensor:
    """The sampler with the reference's lookup; the model still sees ``1000 * m_f * s_i`` as it does there."""
    sigmas = shifted_sigmas(steps)
    j = reference_steps(steps, multipliers)
    latents = noise.clone()
    for index, z in clean.items():
        m = float(multipliers[index] * sigmas[j[0]])
        latents[:, :, index : index + 1] = noised_conditioning(z, noise[:, :, index : index + 1], m)
    with torch.no_grad():
        for i in range(steps):
            timestep = frame_timesteps(sigmas[i] * multipliers)[None]
            velocity = guided_velocity(model, latents, timestep, positive, negative, cfg)
            dt = multipliers * (sigmas[j[i] + 1] - sigmas[j[i]])
            latents = latents + velocity * dt.view(1, 1, -1, 1, 1)
    return latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=GOLDEN)
    parser.add_argument("--multiplier", type=float, default=0.5)
    parser.add_argument("--steps", type=int, help="default: the golden case's")
    args = parser.parse_args()
    with safe_open(str(args.golden), framework="pt") as f:
        meta = json.loads(f.metadata()["pusa_golden"])
    tensors = load_file(str(args.golden))
    case = meta["cases"][0]
    model = transformer_from_original_state_dict(
        {k[4:]: v for k, v in tensors.items() if k.startswith("dit.")}, golden_transformer_config(meta["config"]),
        torch.float32)
    load_lora(model, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}, alpha=case["alpha"])
    noise = tensors[f"case.{case['name']}.noise"]
    pos, neg = tensors["context.positive"], tensors["context.negative"]
    frames, steps, cfg = noise.shape[2], args.steps or case["steps"], case["cfg"]
    g = torch.Generator().manual_seed(0)
    clean = {i: torch.randn(noise[:, :, :1].shape, generator=g) for i in range(frames)}

    print(f"golden tiny config {meta['config']}, {frames} latent frames, {steps} steps, cfg {cfg}")
    for label, m in (("all frames conditioned", torch.full((frames,), args.multiplier)),
                     ("last frame free (m = 1)", torch.cat([torch.full((frames - 1,), args.multiplier),
                                                            torch.ones(1)]))):
        ours = sample(model, noise, clean, m, pos, neg, steps, cfg).latents
        theirs = reference_rule_sample(model, noise, clean, m, pos, neg, steps, cfg)
        sigmas, j = shifted_sigmas(steps), reference_steps(steps, m)
        m0 = float(m[0])
        print(f"\n{label}, m = {m0:g} on the conditioned frames")
        print("  step  engine sigma  reference sigma (step j)")
        for i in range(steps):
            print(f"  {i:4d}  {m0 * sigmas[i]:12.4f}  {m0 * sigmas[j[i]]:15.4f} ({int(j[i])})")
        print(f"  max abs latent difference: {(ours - theirs).abs().max().item():.4f}")

    sigmas = shifted_sigmas(10)
    rows = []
    for k in range(1, 20):
        j = reference_steps(10, torch.tensor([k / 20]))
        rows.append(((k / 20) * (sigmas[:10] - sigmas[j]).abs().max().item(), k / 20))
    diff, m = max(rows)
    print(f"\nlargest per-step sigma difference at 10 steps, m in 0.05..0.95: {diff:.3f} (m = {m:g})")


if __name__ == "__main__":
    main()
