"""Scalar vs per-frame vs diffusers per-token timestep modulation: time and peak memory, as ratios.

    python benchmarks/timestep_modulation.py [--layers 2] [--repeats 5]

Runs one mid-size Wan config on the CPU three ways with the same weights and inputs:
  scalar     plain Wan: one timestep for the whole clip (diffusers' model, timestep [B])
  per-frame  Pusa: timestep [B, F], modulation [B, F, 6, D] (this project's PusaTransformer3DModel)
  per-token  diffusers' own 2-D path: the frame timesteps repeated to every token, modulation [B, S, 6, D]
Peak memory is the peak of live activation bytes during one forward, counted exactly by a
TorchDispatchMode over every op's output storage (weights and inputs excluded); times are the best of
interleaved repeats. Then prints the analytic modulation memory for the real 14B.
"""

from __future__ import annotations

import argparse
import sys
import time
import weakref
from collections import Counter

import torch
from diffusers import WanTransformer3DModel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from pusa_core.transformer import PusaTransformer3DModel  # noqa: E402

MID = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=6144, text_dim=512, freq_dim=256)
LATENTS = (1, 16, 21, 16, 28)  # 81 frames at 224x128 pixels: 21 x 8 x 14 = 2352 tokens
TEXT_LEN = 128
VARIANTS = ("scalar", "per-frame", "per-token")


def build(variant: str, layers: int) -> tuple[torch.nn.Module, tuple]:
    torch.manual_seed(0)
    cls = PusaTransformer3DModel if variant == "per-frame" else WanTransformer3DModel
    model = cls(num_layers=layers, **MID).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*LATENTS, generator=g)
    ctx = torch.randn(1, TEXT_LEN, MID["text_dim"], generator=g)
    frames = LATENTS[2]
    per_frame = torch.linspace(0, 1000, frames)[None]
    if variant == "scalar":
        t = torch.tensor([700.0])
    elif variant == "per-frame":
        t = per_frame
    else:
        t = per_frame.repeat_interleave((LATENTS[3] // 2) * (LATENTS[4] // 2), dim=1)
    return model, (x, t, ctx)


class LiveActivationPeak(TorchDispatchMode):
    """Tracks bytes of storages created by ops while any tensor (or view) on them is alive."""

    def __init__(self, preexisting: list[torch.Tensor]) -> None:
        super().__init__()
        self.ignore = {t.untyped_storage().data_ptr() for t in preexisting}
        self.refs: Counter[int] = Counter()
        self.size: dict[int, int] = {}
        self.current = self.peak = 0

    def _release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.current -= self.size.pop(ptr)
            del self.refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in self.ignore or ptr == 0:
                continue
            if ptr not in self.size:
                self.size[ptr] = t.untyped_storage().nbytes()
                self.current += self.size[ptr]
                self.peak = max(self.peak, self.current)
            self.refs[ptr] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def peak_mib(model: torch.nn.Module, inputs: tuple) -> float:
    """Peak live activation memory of one forward pass, MiB."""
    tracked = [*model.parameters(), *model.buffers(), *inputs]
    with torch.no_grad(), LiveActivationPeak(tracked) as mode:
        model(*inputs)
    return mode.peak / 2**20


def analytic_14b(width: int, height: int, frames: int = 81) -> dict[str, float]:
    """GiB of modulation tensors on the 14B (D=5120, 40 blocks) at one resolution, batch 1."""
    d, gib = 5120, 2**30
    f = (frames - 1) // 4 + 1
    tokens = f * (height // 16) * (width // 16)
    return {
        "tokens": tokens,
        # diffusers per-token: timestep_proj [S, 6D] bf16 held for the whole forward, and inside each block
        # the fp32 copy of temb plus the fp32 sum with the table, [S, 6, D] each.
        "per_token_global_gib": tokens * 6 * d * 2 / gib,
        "per_token_block_gib": 2 * tokens * 6 * d * 4 / gib,
        "per_frame_gib": f * 6 * d * 4 / gib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    built = {v: build(v, args.layers) for v in VARIANTS}
    memory = {v: peak_mib(model, inputs) for v, (model, inputs) in built.items()}
    seconds = {v: [] for v in VARIANTS}
    with torch.no_grad():
        for v, (model, inputs) in built.items():
            model(*inputs)
        for _ in range(args.repeats):
            for v, (model, inputs) in built.items():
                t0 = time.perf_counter()
                model(*inputs)
                seconds[v].append(time.perf_counter() - t0)
    best = {v: min(s) for v, s in seconds.items()}

    tokens = LATENTS[2] * (LATENTS[3] // 2) * (LATENTS[4] // 2)
    print(f"mid-size Wan: dim {MID['num_attention_heads'] * MID['attention_head_dim']}, {args.layers} blocks, "
          f"{tokens} tokens ({LATENTS[2]} latent frames), CPU float32, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'variant':10s} {'time s':>8s} {'x scalar':>9s} {'peak MiB':>9s} {'x scalar':>9s}")
    for v in VARIANTS:
        print(f"{v:10s} {best[v]:8.3f} {best[v] / best['scalar']:9.3f} {memory[v]:9.1f} {memory[v] / memory['scalar']:9.3f}")
    print(f"per-token / per-frame: time x{best['per-token'] / best['per-frame']:.2f}, memory x{memory['per-token'] / memory['per-frame']:.2f}")
    print()
    print("Wan2.1-T2V-14B, 81 frames, modulation tensors only (analytic):")
    print(f"{'size':10s} {'tokens':>7s} {'per-token: global':>18s} {'+ per block':>12s} {'per-frame: total':>17s}")
    for w, h in ((832, 480), (1280, 720)):
        a = analytic_14b(w, h)
        print(f"{w}x{h:<6d} {a['tokens']:7d} {a['per_token_global_gib']:15.2f} GiB {a['per_token_block_gib']:8.2f} GiB "
              f"{a['per_frame_gib'] * 1024:13.2f} MiB")


if __name__ == "__main__":
    main()
