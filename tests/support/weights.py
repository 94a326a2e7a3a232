"""Weight folders laid out like the real downloads, with tiny but readable files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file


def tensor_file(path: Path, values: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.arange(values, dtype=np.float32)}, str(path))
    return path


def text_file(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_components(root: Path, shards: int = 2) -> None:
    """transformer sharded with an index, vae and text_encoder single-file, a tokenizer."""
    weight_map = {}
    for i in range(1, shards + 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{shards:05d}.safetensors"
        tensor_file(root / "transformer" / name)
        weight_map[f"w{i}"] = name
    text_file(
        root / "transformer" / "diffusion_pytorch_model.safetensors.index.json", json.dumps({"weight_map": weight_map})
    )
    text_file(root / "transformer" / "config.json")
    for component, weights in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        text_file(root / component / "config.json")
        tensor_file(root / component / weights)
    text_file(root / "tokenizer" / "tokenizer.json")


def make_diffusers(root: Path) -> Path:
    text_file(root / "model_index.json")
    make_components(root)
    return root


def make_lora(path: Path) -> Path:
    """A real torch.save file: the preflight reads its zip directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(1, 4)}, path)
    return path


def make_original(root: Path) -> Path:
    for i in range(1, 7):
        tensor_file(root / f"diffusion_pytorch_model-{i:05d}-of-00006.safetensors")
    (root / "Wan2.1_VAE.pth").write_bytes(b"vae")
    (root / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(b"t5")
    text_file(root / "google" / "umt5-xxl" / "spiece.model", "sp")
    return root


def make_tiny(root: Path) -> Path:
    make_components(root, shards=1)
    tensor_file(root / "pusa_lora.safetensors")
    return root
