"""Per-pass time of the transformer with its LoRAs merged, unmerged, and with no LoRA, measured in one run.

    python benchmarks/lora_merge.py [--shape mid|14b] [--layers 2] [--repeats 7] [--device cpu] [--dtype float32]

``mid`` (default, CPU-sized) keeps the 14B's rank-to-width ratio: dim 1536 (12 heads of 128, Wan2.1-1.3B's
width and its ffn 8960), Pusa's rank 512 scaled to 154 and LightX2V's 64 to 19, 3,360 video tokens (7 latent
frames of 16x30 patches: 25 frames of 480x256) and 512 text tokens. ``14b`` is the real block (dim 5120,
ffn 13824, ranks 512 and 64) at 832x480x81 (32,760 tokens), for a GPU. The stack is the Fast preset's:
Pusa at alpha 1.4 plus LightX2V at weight 1, as :class:`pusa_core.adapters.LoraStack` runs it.

Variants, each its own model built from the same seed: ``plain`` (no peft layers at all), ``unmerged``
(peft runs both adapters beside the base layers), ``merged`` (the deltas fused into the weights).
Passes are timed in turns (plain, unmerged, merged, plain, ...) after one warm-up pass each, so drift
hits every variant alike; the ratios are of the best of ``--repeats`` passes (on a shared machine other
load only ever adds time), the median is printed beside it. It also prints
what a change of alpha costs when merged (restore the pristine weights from the host copy, merge again).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pusa_core.adapters import LIGHTX2V_ADAPTER, LoraCatalog, LoraStack  # noqa: E402
from pusa_core.lora import ADAPTER_NAME, load_lora  # noqa: E402
from pusa_core.tiny_models import random_kohya_lora, random_pusa_lora  # noqa: E402
from pusa_core.transformer import PusaTransformer3DModel  # noqa: E402

SHAPES = {
    # heads of 128, ffn, Pusa rank, LightX2V rank, latent frames, patch rows, patch columns
    "mid": dict(heads=12, ffn=8960, rank=154, lightx2v_rank=19, frames=7, rows=16, cols=30),
    "14b": dict(heads=40, ffn=13824, rank=512, lightx2v_rank=64, frames=21, rows=30, cols=52),
}
STACK = {ADAPTER_NAME: 1.4, LIGHTX2V_ADAPTER: 1.0}


def build(shape: dict, layers: int, with_loras: bool, dtype: torch.dtype, device: str) -> PusaTransformer3DModel:
    torch.manual_seed(0)
    model = PusaTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=shape["heads"], attention_head_dim=128, in_channels=16,
        out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=shape["ffn"], num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    ).eval()
    if with_loras:
        load_lora(model, random_pusa_lora(model, rank=shape["rank"], seed=0, std=0.01))
        lightx2v = random_kohya_lora(model, rank=shape["lightx2v_rank"], seed=1, std=0.01, network_alpha=8.0)
        load_lora(model, lightx2v, adapter_name=LIGHTX2V_ADAPTER)
    model.to(device)
    if dtype != torch.float32:
        # As the loader does: the linear weights in dtype, the time embedder, norms and modulation in float32.
        model.to(dtype)
        keep = set(model._keep_in_fp32_modules)
        for name, module in model.named_modules():
            if keep & set(name.split(".")):
                module.float()
    return model


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="mid")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    shape, dtype = SHAPES[args.shape], getattr(torch, args.dtype)

    g = torch.Generator().manual_seed(2)
    latents = torch.randn(1, 16, shape["frames"], 2 * shape["rows"], 2 * shape["cols"], generator=g)
    latents = latents.to(args.device, dtype)
    timestep = torch.linspace(900, 100, shape["frames"])[None].to(args.device)
    text = torch.randn(1, 512, 4096, generator=g).to(args.device, dtype)

    models = {"plain": build(shape, args.layers, False, dtype, args.device)}
    models["unmerged"] = build(shape, args.layers, True, dtype, args.device)
    LoraStack(models["unmerged"], LoraCatalog(), True, blocker="benchmark").apply(STACK)
    models["merged"] = build(shape, args.layers, True, dtype, args.device)
    merged_stack = LoraStack(models["merged"], LoraCatalog(), True)
    merge_seconds = timed(lambda: merged_stack.apply(STACK), args.device)

    tokens = shape["frames"] * shape["rows"] * shape["cols"]
    print(f"shape {args.shape}: dim {shape['heads'] * 128}, ffn {shape['ffn']}, {args.layers} blocks, ranks "
          f"{shape['rank']} + {shape['lightx2v_rank']}, {tokens:,} tokens, {args.dtype} on {args.device}, "
          f"torch threads {torch.get_num_threads()}")

    def one_pass(model: torch.nn.Module) -> None:
        with torch.no_grad():
            model(latents, timestep, text, return_dict=False)

    times: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():
        one_pass(model)  # warm-up
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(timed(lambda: one_pass(model), args.device))
    best = {name: min(t) for name, t in times.items()}
    for name in models:
        print(f"  {name:9s} {best[name]:.3f} s per pass (best of {args.repeats}; median "
              f"{statistics.median(times[name]):.3f}, worst {max(times[name]):.3f})")
    print(f"ratios of the best: unmerged/plain {best['unmerged'] / best['plain']:.3f}, merged/plain "
          f"{best['merged'] / best['plain']:.3f}, unmerged/merged {best['unmerged'] / best['merged']:.3f}")

    change = timed(lambda: merged_stack.apply({**STACK, ADAPTER_NAME: 1.2}), args.device)
    print(f"merging the stack: {merge_seconds:.3f} s the first time; an alpha change (restore from "
          f"{merged_stack.pristine.describe()}, merge again): {change:.3f} s")


if __name__ == "__main__":
    main()
