"""Wan2.1 T5 checkpoint -> UMT5EncoderModel: golden parity, layout errors, config, .pth loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import UMT5EncoderModel

from conftest import WAN_T5_GOLDEN, require_golden
from pusa_core.wan_t5 import (
    UMT5_XXL_WAN,
    check_wan_t5_golden,
    convert_wan_t5_state_dict,
    load_wan_t5_encoder,
    umt5_config_from_wan,
    umt5_xxl_config,
)

TINY = dict(vocab=50, dim=16, dim_attn=24, dim_ffn=20, num_heads=3, num_layers=2, num_buckets=8)


def wan_state_dict(sizes: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under Wan's T5Encoder names and shapes (nn.Linear weights are [out, in])."""
    g = torch.Generator().manual_seed(seed)
    v, d, da, df, h = (sizes[k] for k in ("vocab", "dim", "dim_attn", "dim_ffn", "num_heads"))
    shapes = {"token_embedding.weight": (v, d), "norm.weight": (d,)}
    for i in range(sizes["num_layers"]):
        shapes |= {
            f"blocks.{i}.norm1.weight": (d,),
            f"blocks.{i}.attn.q.weight": (da, d),
            f"blocks.{i}.attn.k.weight": (da, d),
            f"blocks.{i}.attn.v.weight": (da, d),
            f"blocks.{i}.attn.o.weight": (d, da),
            f"blocks.{i}.pos_embedding.embedding.weight": (sizes["num_buckets"], h),
            f"blocks.{i}.norm2.weight": (d,),
            f"blocks.{i}.ffn.gate.0.weight": (df, d),
            f"blocks.{i}.ffn.fc1.weight": (df, d),
            f"blocks.{i}.ffn.fc2.weight": (d, df),
        }
    return {key: torch.randn(shape, generator=g) for key, shape in shapes.items()}


def test_golden_parity() -> None:
    path = require_golden(WAN_T5_GOLDEN)
    diffs = check_wan_t5_golden(path)
    assert set(diffs) == {"last_hidden_state"}
    assert diffs["last_hidden_state"] < 1e-4


def test_config_mapping_values() -> None:
    config = umt5_config_from_wan(**TINY)
    assert config.vocab_size == 50
    assert config.d_model == 16
    assert config.d_kv == 8  # dim_attn / num_heads
    assert config.d_ff == 20
    assert config.num_heads == 3
    assert config.num_layers == 2
    assert config.relative_attention_num_buckets == 8
    assert config.relative_attention_max_distance == 128
    assert config.layer_norm_epsilon == 1e-6
    assert config.is_gated_act is True
    assert config.dense_act_fn == "gelu_new"
    assert config.dropout_rate == 0.0


def test_config_rejects_heads_not_dividing_dim_attn() -> None:
    with pytest.raises(ValueError, match=r"dim_attn \(24\) must be divisible by num_heads \(5\)"):
        umt5_config_from_wan(**(TINY | {"num_heads": 5}))
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        umt5_config_from_wan(**(TINY | {"num_layers": 0}))


def test_xxl_config_parameter_count_on_meta() -> None:
    config = umt5_xxl_config()
    assert UMT5_XXL_WAN == dict(
        vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24, num_buckets=32
    )
    assert (config.d_kv, config.d_ff, config.num_layers) == (64, 10240, 24)
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    # parameters() yields the tied embedding once.
    count = sum(p.numel() for p in model.parameters())
    embedding = 256384 * 4096
    per_block = 4 * 4096 * 4096 + 3 * 4096 * 10240 + 2 * 4096 + 32 * 64
    assert count == embedding + 24 * per_block + 4096 == 5_680_910_336
    assert 5.6e9 < count < 5.7e9


def test_missing_key_raises_clear_error() -> None:
    state = wan_state_dict(TINY)
    del state["blocks.1.ffn.fc1.weight"]
    with pytest.raises(ValueError, match=r"Missing keys: blocks\.1\.ffn\.fc1\.weight\."):
        convert_wan_t5_state_dict(state)


def test_shared_position_embedding_is_reported_unexpected() -> None:
    state = wan_state_dict(TINY)
    state["pos_embedding.embedding.weight"] = torch.zeros(8, 3)
    with pytest.raises(ValueError, match=r"Unexpected keys: pos_embedding\.embedding\.weight\..*shared_pos=True"):
        convert_wan_t5_state_dict(state)


def test_config_mismatch_names_shapes() -> None:
    config = umt5_config_from_wan(**(TINY | {"dim_ffn": 32}))
    with pytest.raises(ValueError, match=r"config does not match the checkpoint.*\(20, 16\) vs config \(32, 16\)"):
        load_wan_t5_encoder(wan_state_dict(TINY), config)


def test_pth_file_loads_every_weight(tmp_path: Path) -> None:
    state = wan_state_dict(TINY, seed=1)
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({key: value.to(torch.bfloat16) for key, value in state.items()}, path)

    config = umt5_config_from_wan(**TINY)
    model = load_wan_t5_encoder(path, config)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.shared.weight is model.encoder.embed_tokens.weight

    loaded = model.state_dict()
    for wan_key, hf_key in {
        "token_embedding.weight": "shared.weight",
        "norm.weight": "encoder.final_layer_norm.weight",
        "blocks.1.attn.o.weight": "encoder.block.1.layer.0.SelfAttention.o.weight",
        "blocks.1.pos_embedding.embedding.weight": "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
        "blocks.0.ffn.gate.0.weight": "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
        "blocks.0.ffn.fc1.weight": "encoder.block.0.layer.1.DenseReluDense.wi_1.weight",
        "blocks.0.ffn.fc2.weight": "encoder.block.0.layer.1.DenseReluDense.wo.weight",
    }.items():
        assert torch.equal(loaded[hf_key], state[wan_key].to(torch.bfloat16)), hf_key

    ids = torch.tensor([[5, 9, 1, 0], [7, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    with torch.no_grad():
        from_file = model(input_ids=ids, attention_mask=mask).last_hidden_state
        from_dict = load_wan_t5_encoder(state, config)(input_ids=ids, attention_mask=mask).last_hidden_state
    assert from_file.shape == (2, 4, 16)
    assert torch.isfinite(from_file).all()
    assert torch.equal(from_file, from_dict)


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="source: no checkpoint file at"):
        load_wan_t5_encoder(tmp_path / "absent.pth", umt5_config_from_wan(**TINY))
