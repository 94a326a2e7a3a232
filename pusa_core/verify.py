"""``python -m pusa_core.verify FILE.safetensors``: check the engine against golden vectors.

Reads everything from the file: a Pusa file (metadata key ``pusa_golden``: transformer + LoRA + sampler
cases) or a Wan T5 file (``wan_t5_golden``). Weights go through the same loaders users go through.
Prints the max abs difference per item and exits 1 if any exceeds the tolerance. The repository's own
files are ``tests/golden/*.safetensors`` (format in ``tests/golden/README.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .facts import DEFAULT_ALPHA
from .loading import transformer_from_original_state_dict
from .lora import load_lora, set_lora_alpha
from .sampling import sample
from .schedule import frame_multipliers
from .wan_t5 import check_wan_t5_golden

TOLERANCE = 1e-4


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def golden_transformer_config(c: dict) -> dict:
    """diffusers config of the Wan2.1-T2V architecture at the sizes a golden file names."""
    return dict(
        num_attention_heads=c["heads"],
        attention_head_dim=c["dim"] // c["heads"],
        in_channels=16,
        out_channels=16,
        text_dim=c["text_dim"],
        freq_dim=c["freq_dim"],
        ffn_dim=c["ffn"],
        num_layers=c["layers"],
        patch_size=(1, 2, 2),
        eps=1e-6,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    )


def check_pusa_golden(path: str | Path) -> dict[str, float]:
    """Max abs difference for the forward outputs and every sampling case of a Pusa golden file."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["pusa_golden"])
    tensors = load_file(str(path))
    config = golden_transformer_config(meta["config"])
    model = transformer_from_original_state_dict(_prefixed(tensors, "dit."), config, torch.float32)
    x, t = tensors["forward.x"], tensors["forward.timestep"]
    pos, neg = tensors["context.positive"], tensors["context.negative"]
    diffs: dict[str, float] = {}
    with torch.no_grad():
        diffs["forward.out_base"] = (model(x, t, pos).sample - tensors["forward.out_base"]).abs().max().item()
        uniform = torch.full((x.shape[0],), 700.0)
        diffs["forward.out_uniform_700"] = (model(x, uniform, pos).sample - tensors["forward.out_uniform_700"]).abs().max().item()
        load_lora(model, _prefixed(tensors, "lora."), alpha=DEFAULT_ALPHA)
        lora_key = "forward.out_lora_1.4"
        diffs[lora_key] = (model(x, t, pos).sample - tensors[lora_key]).abs().max().item()

    for case in meta["cases"]:
        name = case["name"]
        cond = {int(k): float(v) for k, v in case["cond"].items()}
        noise = tensors[f"case.{name}.noise"]
        clean = {i: tensors[f"case.{name}.cond_latent.{i}"] for i in cond}
        set_lora_alpha(model, case["alpha"])
        result = sample(model, noise, clean, frame_multipliers(noise.shape[2], cond), pos, neg, case["steps"], case["cfg"])
        diffs[f"case.{name}"] = (result.latents - tensors[f"case.{name}.final_latents"]).abs().max().item()
    return diffs


def check_file(path: str | Path) -> dict[str, float]:
    with safe_open(str(path), framework="pt") as f:
        keys = set((f.metadata() or {}).keys())
    if "pusa_golden" in keys:
        return check_pusa_golden(path)
    if "wan_t5_golden" in keys:
        return check_wan_t5_golden(path)
    raise ValueError(f"{path}: no 'pusa_golden' or 'wan_t5_golden' metadata; not a golden file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pusa_core.verify", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="golden .safetensors files")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        try:
            diffs = check_file(path)
        except (OSError, ValueError, KeyError) as err:
            print(f"{path}: cannot verify: {err}")
            failed = True
            continue
        print(path)
        for item, diff in diffs.items():
            ok = diff <= args.tolerance
            failed |= not ok
            print(f"  {'ok  ' if ok else 'FAIL'} {item:32s} max abs diff {diff:.3e}")
    print("FAILED" if failed else f"all within {args.tolerance:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
