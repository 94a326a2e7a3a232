"""Host memory of reading and attaching a LoRA of the real Pusa V1 shapes, before and after mmap + low_cpu_mem_usage.

    python benchmarks/lora_memory.py [--blocks 40] [--attach-blocks 40] [--dir /tmp/pusa_lora_memory]

Writes (once, then reuses) a random bf16 LoRA in the Pusa layout with pusa_v1.pt's shapes: rank 512 on
self/cross attention q, k, v, o and ffn.0 / ffn.2 of every block, dim 5120, ffn 13824 (40 blocks: 4.9 GB).
Each variant runs in a fresh interpreter; "peak" is the rise of the peak RSS (VmHWM, reset through
/proc/self/clear_refs right before the measured step) over the RSS at its start, "anon"/"file" are the
rise of anonymous memory and of mapped file pages (page cache, which the kernel can drop) after it:

  read       torch.load of the .pt as before  vs  read_lora_file (mmap=True)
  attach     load_lora_adapter of the converted LoRA, low_cpu_mem_usage False vs True
  load_lora  the whole load as before (no mmap, random init)  vs  load_lora as shipped (also checks NaN/inf)

attach and load_lora use a PusaTransformer3DModel of the real 14B config with --attach-blocks blocks; its
base weights are allocated but never written, so they add no RSS and the numbers are the LoRA's alone.
Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import init_empty_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pusa_core.loading import TRANSFORMER_14B_CONFIG, read_config  # noqa: E402
from pusa_core.lora import ADAPTER_NAME, load_lora, read_lora_file, to_diffusers_lora  # noqa: E402
from pusa_core.tiny_models import PUSA_LORA_TARGETS  # noqa: E402
from pusa_core.transformer import PusaTransformer3DModel  # noqa: E402
from pusa_core.weights import lora_problems  # noqa: E402

RANK = 512
GB = 1e9
VARIANTS = {
    "read-before": "read       before: torch.load",
    "read-after": "read       after:  read_lora_file (mmap)",
    "attach-before": "attach     before: low_cpu_mem_usage=False",
    "attach-after": "attach     after:  low_cpu_mem_usage=True",
    "load-before": "load_lora  before: no mmap, random init",
    "load-after": "load_lora  after:  as shipped",
}


def real_config(blocks: int) -> dict:
    return read_config(TRANSFORMER_14B_CONFIG) | {"num_layers": blocks}


def write_lora(path: Path, blocks: int) -> None:
    """A random Pusa-layout LoRA with the real shapes, saved with torch.save like pusa_v1.pt."""
    config = real_config(blocks)
    dim, ffn = config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"]
    shapes = {t: (dim, dim) for t in PUSA_LORA_TARGETS} | {"ffn.0": (ffn, dim), "ffn.2": (dim, ffn)}
    g = torch.Generator().manual_seed(0)
    state = {}
    for block in range(blocks):
        for target, (fan_out, fan_in) in shapes.items():
            key = f"blocks.{block}.{target}"
            state[f"{key}.lora_A.default.weight"] = (torch.randn(RANK, fan_in, generator=g) * 0.01).bfloat16()
            state[f"{key}.lora_B.default.weight"] = (torch.randn(fan_out, RANK, generator=g) * 0.01).bfloat16()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def lora_file(folder: Path, blocks: int) -> Path:
    path = folder / f"pusa_shapes_{blocks}_blocks.pt"
    if not path.is_file() or lora_problems(path):
        print(f"writing {path} ...", flush=True)
        write_lora(path, blocks)
    return path


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(v) * 1024 for k, v in re.findall(r"^(VmHWM|VmRSS|RssAnon|RssFile):\s+(\d+) kB", text, re.M)}


def measure(step: Callable[[], object]) -> dict[str, float]:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    start = _status()
    began = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - began
    end = _status()
    del result
    return {
        "peak": end["VmHWM"] - start["VmRSS"],
        "anon": end["RssAnon"] - start["RssAnon"],
        "file": end["RssFile"] - start["RssFile"],
        "seconds": seconds,
    }


def empty_real_width_transformer(blocks: int) -> PusaTransformer3DModel:
    """The 14B architecture with ``blocks`` blocks in bf16; its weights are allocated, never written."""
    with init_empty_weights():
        model = PusaTransformer3DModel(**real_config(blocks))
    return model.to(torch.bfloat16).to_empty(device="cpu").eval()


def run_variant(variant: str, path: Path, blocks: int) -> dict[str, float]:
    if variant == "read-before":
        return measure(lambda: torch.load(path, map_location="cpu", weights_only=True))
    if variant == "read-after":
        return measure(lambda: read_lora_file(path))
    model = empty_real_width_transformer(blocks)
    if variant == "load-before":
        def old_load() -> None:
            converted = to_diffusers_lora(torch.load(path, map_location="cpu", weights_only=True), model)
            model.load_lora_adapter(converted, prefix=None, adapter_name=ADAPTER_NAME)

        return measure(old_load)
    if variant == "load-after":
        return measure(lambda: load_lora(model, path))
    converted = to_diffusers_lora(read_lora_file(path), model)
    low_cpu = variant == "attach-after"
    return measure(
        lambda: model.load_lora_adapter(converted, prefix=None, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=low_cpu)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=40, help="blocks in the file that 'read' measures (14B: 40)")
    parser.add_argument("--attach-blocks", type=int, default=40, help="blocks of the transformer 'attach'/'load_lora' use")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/pusa_lora_memory"), help="where the LoRA files go")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # one measurement, in a child
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.file, args.attach_blocks)))
        return

    read_path = lora_file(args.dir, args.blocks)
    attach_path = lora_file(args.dir, args.attach_blocks)
    began = time.perf_counter()
    assert not lora_problems(read_path)
    print(f"LoRA file {read_path}: {read_path.stat().st_size / GB:.2f} GB, {args.blocks} blocks x 10 modules, rank {RANK}, bf16")
    print(f"preflight (lora_problems) on it: {(time.perf_counter() - began) * 1e3:.1f} ms")
    print(f"attach / load_lora: a real-width transformer with {args.attach_blocks} of 40 blocks, file {attach_path.name}")
    if args.attach_blocks != 40 or args.blocks != 40:
        print(f"(reduced: scale 'attach'/'load_lora' by {40 / args.attach_blocks:g} and 'read' by {40 / args.blocks:g} for the 14B)")
    print(f"{'step       variant':<48}{'peak RSS':>10}{'anon':>10}{'file':>10}{'seconds':>9}")
    for variant, label in VARIANTS.items():
        path = read_path if variant.startswith("read") else attach_path
        command = [sys.executable, __file__, "--variant", variant, "--file", str(path), "--attach-blocks", str(args.attach_blocks)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        r = json.loads(out)
        print(f"{label:<48}{r['peak'] / GB:>7.2f} GB{r['anon'] / GB:>7.2f} GB{r['file'] / GB:>7.2f} GB{r['seconds']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
