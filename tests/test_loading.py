"""Loaders: original Wan shards, diffusers folders, the small-model folder with its LoRA and defaults."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pusa_core.loading import load_components, load_original_transformer
from pusa_core.text import encode_prompts
from pusa_core.tiny_models import (
    BASIC_WORDS,
    build_word_tokenizer,
    random_pusa_lora,
    tiny_text_encoder,
    tiny_transformer,
    tiny_vae,
)
from pusa_core.weights import ORIGINAL_SHARDS, ModelSource


def test_original_shards_load_and_match_reference(pusa_golden, golden_config, tmp_path):
    t = pusa_golden[1]
    dit = {k[4:]: v for k, v in t.items() if k.startswith("dit.")}
    keys = sorted(dit)
    for i, name in enumerate(ORIGINAL_SHARDS):
        save_file({k: dit[k].contiguous() for k in keys[i :: len(ORIGINAL_SHARDS)]}, tmp_path / name)
    model = load_original_transformer(tmp_path, torch.float32, config=golden_config)
    with torch.no_grad():
        out = model(t["forward.x"], t["forward.timestep"], t["context.positive"]).sample
    assert (out - t["forward.out_base"]).abs().max() < 1e-4


def _save_tiny_folder(folder: Path) -> dict:
    parts = {
        "transformer": tiny_transformer(seed=1),
        "vae": tiny_vae(seed=1),
        "tokenizer": build_word_tokenizer(BASIC_WORDS),
    }
    parts["text_encoder"] = tiny_text_encoder(len(parts["tokenizer"]), seed=1)
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    return parts


def test_diffusers_folder_loads_every_component(tmp_path):
    parts = _save_tiny_folder(tmp_path)
    c = load_components(ModelSource("diffusers", tmp_path, None, "test", False), dtype=torch.float32)
    assert not c.has_lora
    ids = ["a red ball"]
    assert torch.equal(encode_prompts(c.tokenizer, c.text_encoder, ids, 16), encode_prompts(parts["tokenizer"], parts["text_encoder"], ids, 16))
    x, ts, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([[900.0, 0.0]]), torch.randn(1, 5, 32)
    with torch.no_grad():
        assert torch.equal(c.transformer(x, ts, ctx).sample, parts["transformer"](x, ts, ctx).sample)


def test_small_model_folder_brings_lora_and_defaults(tmp_path):
    parts = _save_tiny_folder(tmp_path)
    save_file(random_pusa_lora(parts["transformer"]), tmp_path / "pusa_lora.safetensors")
    (tmp_path / "defaults.json").write_text(
        json.dumps({"width": 64, "height": 48, "num_frames": 17, "fps": 8, "lora_alpha": 1.1, "noise_multiplier": 0.3, "max_sequence_length": 24})
    )
    c = load_components(ModelSource("tiny", tmp_path, tmp_path / "pusa_lora.safetensors", "tiny", True))
    assert c.has_lora and c.is_small
    assert (c.defaults.width, c.defaults.height, c.defaults.num_frames, c.defaults.lora_alpha) == (64, 48, 17, 1.1)
    assert c.noise_multiplier == 0.3 and c.max_sequence_length == 24
    assert c.transformer.dtype == torch.float32
    scaling = c.transformer.blocks[0].attn1.to_q.scaling["pusa"]
    assert abs(scaling - 1.1) < 1e-9


def test_shipped_small_model_is_found_and_runs(tmp_path):
    """With no real weights, auto mode picks weights/pusa-tiny and a default-size CPU job completes."""
    from dataclasses import replace

    from pusa_core.engine import Engine
    from pusa_core.media import video_info
    from pusa_core.requests import TextToVideo
    from pusa_core.weights import SHIPPED_TINY_DIR, resolve_model_source

    source = resolve_model_source(tmp_path / "no-weights-here")
    assert source.kind == "tiny" and source.base_dir.resolve() == SHIPPED_TINY_DIR
    engine = Engine.from_source(source, tmp_path / "out")
    assert engine.wait_ready(120).state == "ready"
    settings = replace(engine.defaults(), prompt="a red circle moves right on a blue background", seed=3)
    result = engine.generate(TextToVideo(settings))
    assert video_info(result.video_path) == (settings.num_frames, settings.width, settings.height)
    assert result.settings["model"] == source.name
