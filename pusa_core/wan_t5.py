"""Wan2.1's own umT5 text-encoder checkpoint -> transformers' ``UMT5EncoderModel``.

Wan ships ``models_t5_umt5-xxl-enc-bf16.pth`` in the layout of its ``wan/modules/t5.py``
``T5Encoder`` (``blocks.N.attn.q``, ``blocks.N.ffn.gate.0``, ...). That module is umT5 exactly:
RMS layer norm without bias, no 1/sqrt(d) attention scaling, a relative position bias per block
(``shared_pos=False``), and a tanh-GELU gated FFN. So the weights only need renaming; nothing is
rescaled or transposed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import UMT5Config, UMT5EncoderModel

# Wan2.1's umT5-XXL encoder (the numbers in Wan's ``umt5_xxl`` factory).
UMT5_XXL_WAN = dict(
    vocab=256384,
    dim=4096,
    dim_attn=4096,
    dim_ffn=10240,
    num_heads=64,
    num_layers=24,
    num_buckets=32,
)

# Fixed in Wan's T5Encoder for every size.
_MAX_DISTANCE = 128
_EPS = 1e-6

# Original per-block name -> UMT5EncoderModel name (``{i}`` is the block index).
_BLOCK_KEYS = {
    "norm1.weight": "encoder.block.{i}.layer.0.layer_norm.weight",
    "attn.q.weight": "encoder.block.{i}.layer.0.SelfAttention.q.weight",
    "attn.k.weight": "encoder.block.{i}.layer.0.SelfAttention.k.weight",
    "attn.v.weight": "encoder.block.{i}.layer.0.SelfAttention.v.weight",
    "attn.o.weight": "encoder.block.{i}.layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "encoder.block.{i}.layer.1.layer_norm.weight",
    # Wan computes fc1(x) * gelu(gate(x)): the activated branch is HF's wi_0, the linear one wi_1.
    "ffn.gate.0.weight": "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "encoder.block.{i}.layer.1.DenseReluDense.wo.weight",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_GOLDEN_META_KEY = "wan_t5_golden"
_GOLDEN_PREFIX = "t5."


def umt5_config_from_wan(
    vocab: int,
    dim: int,
    dim_attn: int,
    dim_ffn: int,
    num_heads: int,
    num_layers: int,
    num_buckets: int,
) -> UMT5Config:
    """The ``UMT5Config`` equivalent to Wan's ``T5Encoder(shared_pos=False)`` with these sizes.

    Argument names are those of Wan's ``T5Encoder``. Dropout is zero: the encoder is only used
    for inference.
    """
    sizes = dict(
        vocab=vocab,
        dim=dim,
        dim_attn=dim_attn,
        dim_ffn=dim_ffn,
        num_heads=num_heads,
        num_layers=num_layers,
        num_buckets=num_buckets,
    )
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if dim_attn % num_heads:
        raise ValueError(
            f"dim_attn ({dim_attn}) must be divisible by num_heads ({num_heads}): "
            "each head gets dim_attn / num_heads channels"
        )
    return UMT5Config(
        vocab_size=vocab,
        d_model=dim,
        d_kv=dim_attn // num_heads,
        d_ff=dim_ffn,
        num_heads=num_heads,
        num_layers=num_layers,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=_MAX_DISTANCE,
        layer_norm_epsilon=_EPS,
        feed_forward_proj="gated-gelu",  # -> gelu_new, the tanh GELU Wan uses
        dropout_rate=0.0,
    )


def umt5_xxl_config() -> UMT5Config:
    """The ``UMT5Config`` of Wan2.1's umT5-XXL text encoder."""
    return umt5_config_from_wan(**UMT5_XXL_WAN)


def _describe(keys: set[str], limit: int = 12) -> str:
    shown = sorted(keys)[:limit]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(shown) + more


def convert_wan_t5_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan ``T5Encoder`` state dict to ``UMT5EncoderModel`` keys.

    The token embedding is returned under both ``shared.weight`` and
    ``encoder.embed_tokens.weight`` (the same tensor), as ``UMT5EncoderModel.state_dict()`` names
    it twice. Raises ``ValueError`` naming every missing and unexpected key when the layout is not
    Wan's encoder with one position embedding per block.
    """
    if not isinstance(state_dict, dict):
        raise ValueError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    indices = {int(m.group(1)) for key in state_dict if (m := _BLOCK_RE.match(key))}
    num_blocks = max(indices) + 1 if indices else 1  # no blocks at all: report block 0 as missing

    mapping = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
    for i in range(num_blocks):
        for wan_name, hf_name in _BLOCK_KEYS.items():
            mapping[f"blocks.{i}.{wan_name}"] = hf_name.format(i=i)

    missing = set(mapping) - set(state_dict)
    unexpected = set(state_dict) - set(mapping)
    if missing or unexpected:
        lines = ["state_dict is not Wan2.1's T5Encoder layout (models_t5_umt5-xxl-enc-bf16.pth)."]
        if missing:
            lines.append(f"Missing keys: {_describe(missing)}.")
        if unexpected:
            lines.append(f"Unexpected keys: {_describe(unexpected)}.")
        if "pos_embedding.embedding.weight" in unexpected:
            lines.append("A top-level pos_embedding means shared_pos=True, which umT5 does not have.")
        raise ValueError(" ".join(lines))

    bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ValueError(f"state_dict values must be tensors; not a tensor: {_describe(set(bad))}")

    converted = {mapping[key]: value for key, value in state_dict.items()}
    converted["encoder.embed_tokens.weight"] = converted["shared.weight"]
    return converted


def _read_source(source: str | Path | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, dict):
        return source
    if not isinstance(source, (str, Path)):
        raise ValueError(
            f"source must be a path to the .pth checkpoint or a state dict, got {type(source).__name__}"
        )
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"source: no checkpoint file at {path}")
    # mmap: the XXL file is ~11 GB; tensors are paged in only as they are used.
    state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"source: {path} holds a {type(state_dict).__name__}, expected a state dict")
    return state_dict


def load_wan_t5_encoder(
    source: str | Path | dict[str, torch.Tensor],
    config: UMT5Config,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> UMT5EncoderModel:
    """Build a ``UMT5EncoderModel`` holding a Wan2.1 T5 encoder checkpoint, in eval mode.

    ``source`` is the original ``.pth`` file or its state dict. The model is created on the meta
    device and every weight is assigned from the checkpoint (cast to ``dtype`` on ``device``), so
    no random initialisation is computed and nothing is allocated twice. Every parameter is cast
    to ``dtype``, ``wo`` included: Wan runs its encoder in a single dtype, and matching it beats
    transformers' fp32 upcast of ``wo`` for reproducing Wan's embeddings.
    """
    if not isinstance(config, UMT5Config):
        raise ValueError(
            f"config must be a UMT5Config (see umt5_config_from_wan), got {type(config).__name__}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
    converted = convert_wan_t5_state_dict(_read_source(source))

    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    mismatched = {
        f"{key} {tuple(value.shape)} vs config {tuple(expected[key])}"
        for key, value in converted.items()
        if key in expected and value.shape != expected[key]
    }
    if mismatched:
        raise ValueError(
            "config does not match the checkpoint (build it with umt5_config_from_wan from the "
            f"checkpoint's sizes); shape mismatches: {_describe(mismatched)}"
        )

    weights = {key: value.to(device=device, dtype=dtype) for key, value in converted.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    # assign=True gives each name its own Parameter; make the embedding one shared Parameter again.
    model.tie_weights()
    return model.eval()


def check_wan_t5_golden(path: str | Path) -> dict[str, float]:
    """Max abs difference between our converted encoder and Wan's own, from a golden file.

    The file (format in ``tests/golden/README.md``) carries its sizes in the ``wan_t5_golden``
    metadata, Wan-layout weights under ``t5.``, ``input_ids``, ``attention_mask`` and Wan's
    ``last_hidden_state``. Only positions with ``attention_mask == 1`` are compared.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no golden file at {path}")
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        if _GOLDEN_META_KEY not in metadata:
            raise ValueError(f"path: {path} has no '{_GOLDEN_META_KEY}' metadata; not a Wan T5 golden file")
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    sizes = json.loads(metadata[_GOLDEN_META_KEY])["config"]
    config = umt5_config_from_wan(**{name: sizes[name] for name in UMT5_XXL_WAN})

    weights = {
        key[len(_GOLDEN_PREFIX) :]: value for key, value in tensors.items() if key.startswith(_GOLDEN_PREFIX)
    }
    model = load_wan_t5_encoder(weights, config, dtype=torch.float32)
    mask = tensors["attention_mask"]
    with torch.no_grad():
        out = model(input_ids=tensors["input_ids"], attention_mask=mask).last_hidden_state
    keep = mask.bool()
    diff = (out[keep] - tensors["last_hidden_state"][keep]).abs().max().item()
    return {"last_hidden_state": diff}
