"""What the step preview costs on the 14B, against a step's own cost.

The linear latent-to-RGB strip is timed here, on this CPU, for the 14B's latents at 832x480x81
(``[1, 16, 21, 60, 104]``); a step is estimated from the 14B's FLOPs per pass (``facts.pass_flops``)
at an assumed achieved throughput. On a GPU the strip is faster still (it runs where the latents are).

    python -m benchmarks.preview_cost [--tflops 400]   (from the repository root)
"""

from __future__ import annotations

import argparse
import time

import torch

from pusa_core import facts
from pusa_core.preview import linear_strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=400.0, help="achieved bf16 TFLOP/s assumed for a 14B pass (default 400)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    width, height, frames = facts.DEFAULT_WIDTH, facts.DEFAULT_HEIGHT, facts.DEFAULT_FRAMES
    latents = torch.randn(1, 16, facts.latent_frame_count(frames), height // 8, width // 8)
    linear_strip(latents)
    start = time.perf_counter()
    for _ in range(args.repeats):
        linear_strip(latents)
    preview = (time.perf_counter() - start) / args.repeats
    tokens = facts.latent_tokens(width, height, frames)
    for passes, label in ((2, "cfg > 1 (2 passes)"), (1, "cfg 1 (1 pass)")):
        step = passes * facts.pass_flops(tokens) / (args.tflops * 1e12)
        print(f"{label}: step ~{step:.2f} s at {args.tflops:g} TFLOP/s; linear preview {preview * 1e3:.2f} ms "
              f"on this CPU = {100 * preview / step:.3f} % of the step")


if __name__ == "__main__":
    main()
