"""What a job loads, measured exactly: the models built on the meta device and their weight bytes.

The models are built with the dtypes a real load gives them (no memory, no download) and their
parameter and buffer sizes are summed.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from diffusers import AutoencoderKLWan
from peft import LoraConfig, inject_adapter_in_model

from ..errors import PusaInputError
from ..facts import LORA_TARGET_PATTERN, PUSA_LORA_RANK
from ..loading import TRANSFORMER_14B_CONFIG, VAE_CONFIG
from ..transformer import PusaTransformer3DModel

# Wan2.1's umT5-XXL encoder (vocab 256384, d_model 4096, 24 layers, d_ff 10240, 64 heads) as
# transformers' UMT5EncoderModel builds it on the meta device; the token embedding is its largest layer.
UMT5_XXL_PARAMS = 5_680_910_336
UMT5_XXL_EMBEDDING_PARAMS = 256_384 * 4096

WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn, "fp32": torch.float32}
VAE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class PlanOptions:
    """What is loaded: weight storage, LoRA rank (0: none), whether the LoRAs are merged into the
    weights for the denoising loop (then no pass computes a LoRA branch), text encoder and VAE sizes."""

    weights: str = "bf16"
    lora_rank: int = PUSA_LORA_RANK
    lora_merged: bool | None = None  # None: as the engine runs them (facts.lora_merge_blocker), set by the planner
    active_lora_rank: int | None = None  # the summed rank a pass computes unmerged (None: every loaded one)
    vae_dtype: str = "fp32"
    transformer_config: str | Mapping[str, Any] = TRANSFORMER_14B_CONFIG.read_text()
    vae_config: str | Mapping[str, Any] = VAE_CONFIG.read_text()
    text_encoder_params: int = UMT5_XXL_PARAMS
    text_encoder_largest_layer: int = UMT5_XXL_EMBEDDING_PARAMS

    def __post_init__(self) -> None:
        # Configs are kept as JSON text so options stay hashable (the meta models are cached per options).
        for name in ("transformer_config", "vae_config"):
            value = getattr(self, name)
            if not isinstance(value, str):
                object.__setattr__(self, name, json.dumps(dict(value), sort_keys=True))
        if self.weights not in WEIGHT_DTYPES:
            raise PusaInputError("weights", f"{self.weights!r} is not one of {', '.join(WEIGHT_DTYPES)}")
        if self.vae_dtype not in VAE_DTYPES:
            raise PusaInputError("vae_dtype", f"{self.vae_dtype!r} is not one of {', '.join(VAE_DTYPES)}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise PusaInputError("lora_rank", f"{self.lora_rank!r} must be 0 (no LoRA) or a positive rank like 512")
        if self.active_lora_rank is not None and (
                not isinstance(self.active_lora_rank, int) or not 0 <= self.active_lora_rank <= self.lora_rank):
            raise PusaInputError("active_lora_rank", f"{self.active_lora_rank!r} must be a rank from 0 to {self.lora_rank}")
        if self.lora_merged is not None and not isinstance(self.lora_merged, bool):
            raise PusaInputError("lora_merged", f"must be True, False or None, got {self.lora_merged!r}")

    @classmethod
    def with_text_encoder_config(cls, text_encoder_config: Any, **kwargs: Any) -> PlanOptions:
        """Options whose text-encoder sizes come from a transformers ``UMT5Config`` (meta device)."""
        from transformers import UMT5EncoderModel

        with torch.device("meta"):
            encoder = UMT5EncoderModel(text_encoder_config)
        params = sum(p.numel() for p in encoder.parameters())
        largest = max(p.numel() for p in encoder.parameters())
        return cls(text_encoder_params=params, text_encoder_largest_layer=largest, **kwargs)

    @property
    def compute_bytes(self) -> int:
        """Activation element size: bf16 on GPUs, fp32 when the weights are fp32 (CPU)."""
        return 4 if self.weights == "fp32" else 2


def build_meta_transformer(config: Mapping[str, Any], weights: str = "bf16", lora_rank: int = PUSA_LORA_RANK) -> PusaTransformer3DModel:
    """The transformer on the meta device with the dtypes a real load gives it.

    ``from_pretrained(torch_dtype=bf16)`` keeps the model's ``_keep_in_fp32_modules`` in fp32;
    fp8 storage is diffusers' layerwise casting, applied the same way the placement applies it;
    the LoRA is a peft adapter stored in bf16 next to the base weights (unfused).
    """
    with torch.device("meta"):
        model = PusaTransformer3DModel.from_config(dict(config))
    keep = set(model._keep_in_fp32_modules or ())
    dtype = torch.float32 if weights == "fp32" else torch.bfloat16
    for name, param in model.named_parameters():
        if not keep.intersection(name.split(".")):
            param.data = param.data.to(dtype)
    if weights == "fp8":
        enable_fp8_storage(model)
    if lora_rank:
        lora = LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGET_PATTERN)
        with torch.device("meta"):
            inject_adapter_in_model(lora, model, low_cpu_mem_usage=True)
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(dtype)
    return model


def enable_fp8_storage(transformer: torch.nn.Module) -> None:
    """Store the transformer's linear weights in fp8 and compute in bf16 (diffusers layerwise casting).

    diffusers' default patterns skip embeddings, norms, modulation tables and peft LoRA layers.
    """
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)


def module_bytes(module: torch.nn.Module, lora: bool | None = None) -> int:
    """Parameter and buffer bytes of a module; ``lora`` True/False keeps only / drops LoRA tensors."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    if lora is not None:
        named = [(n, t) for n, t in named if ("lora_" in n) == lora]
    return sum(t.numel() * t.element_size() for _, t in named)


@dataclass(frozen=True)
class ComponentSizes:
    """Exact weight bytes of everything a job loads."""

    transformer: int  # base weights and buffers, without LoRA
    lora: int
    non_block: int  # patch embedding, condition embedder, output head (with their LoRA: none)
    block: int  # the largest block, LoRA included
    block_lora: int
    largest_fp8_linear_params: int  # 0 without fp8 storage
    num_blocks: int
    text_encoder: int
    text_encoder_largest_layer: int
    vae: int


@dataclass
class MetaModels:
    """The meta-device transformer and the sizes of every component for one set of options."""

    transformer: PusaTransformer3DModel
    sizes: ComponentSizes
    vae_base_dim: int
    vae_tile: tuple[int, int]


@functools.lru_cache(maxsize=4)
def _cached_models(transformer_config: str, weights: str, lora_rank: int, vae_config: str, vae_dtype: str,
                   text_params: int, text_largest: int) -> MetaModels:
    model = build_meta_transformer(json.loads(transformer_config), weights, lora_rank)
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(json.loads(vae_config))
    blocks = list(model.blocks)
    text_bytes = 4 if weights == "fp32" else 2
    sizes = ComponentSizes(
        transformer=module_bytes(model, lora=False),
        lora=module_bytes(model, lora=True),
        non_block=module_bytes(model) - sum(module_bytes(b) for b in blocks),
        block=max(module_bytes(b) for b in blocks),
        block_lora=max(module_bytes(b, lora=True) for b in blocks),
        largest_fp8_linear_params=max((m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
                                       and m.weight.dtype == torch.float8_e4m3fn), default=0),
        num_blocks=len(blocks),
        text_encoder=text_params * text_bytes,
        text_encoder_largest_layer=text_largest * text_bytes,
        vae=sum(t.numel() for t in (*vae.parameters(), *vae.buffers())) * VAE_DTYPES[vae_dtype].itemsize,
    )
    base_dim = vae.config.decoder_base_dim or vae.config.base_dim
    return MetaModels(model, sizes, base_dim, (vae.tile_sample_min_height, vae.tile_sample_min_width))


def meta_models(options: PlanOptions) -> MetaModels:
    """Build (once per options) the meta-device models the planner measures."""
    return _cached_models(options.transformer_config, options.weights, options.lora_rank, options.vae_config,
                          options.vae_dtype, options.text_encoder_params, options.text_encoder_largest_layer)
