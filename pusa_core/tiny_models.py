"""Tiny Wan components built from configs on the fly: for tests, benchmarks and training from scratch.

Same classes as the 14B (PusaTransformer3DModel, AutoencoderKLWan, UMT5EncoderModel, a fast
tokenizer), only small, so every code path the real model takes runs here in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

from .loading import PusaComponents
from .lora import load_lora
from .facts import LORA_TARGETS
from .requests import Settings
from .transformer import PusaTransformer3DModel
from .training.data import EXAMPLE_PROMPTS
from .wan_t5 import umt5_config_from_wan

TINY_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
# Four levels and three temporal downsamples keep the real 8x spatial, 4x temporal compression.
TINY_VAE: dict[str, Any] = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True, True]
)
# The trained small model's VAE (make_tiny), Wan2.2's patchified layout in small: a 2x2
# space-to-depth, then two 2x downsamples, so the convolutions run at 32x32 while the total
# compression stays Wan2.1's 8x spatial, 4x temporal.
SMALL_VAE: dict[str, Any] = {"base_dim": 16, "dim_mult": [1, 2, 2], "temperal_downsample": [True, True],
                             "patch_size": 2, "in_channels": 12, "out_channels": 12}
TINY_TEXT: dict[str, Any] = dict(dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, num_buckets=32)

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
BASIC_WORDS = (
    "a an the and of on in at to with is moves moving slowly quickly left right up down across over around "
    "red green blue yellow white black orange purple pink gray cat dog bird car person ball circle square "
    "triangle shape sky sea water street room forest city background light dark bright video camera scene"
).split()


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over ``words``: pad=0, eos=1 (appended), unknown words -> 2."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_transformer(seed: int = 0, **overrides: Any) -> PusaTransformer3DModel:
    torch.manual_seed(seed)
    return PusaTransformer3DModel(**{**TINY_TRANSFORMER, **overrides}).eval()


def tiny_vae(seed: int = 0, **overrides: Any) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(**{**TINY_VAE, **overrides}).eval()


def tiny_text_encoder(vocab_size: int, seed: int = 0, **overrides: Any) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    config = umt5_config_from_wan(vocab=vocab_size, **{**TINY_TEXT, **overrides})
    return UMT5EncoderModel(config).eval()


# Original Wan names of the modules the Pusa LoRA trains, per block.
PUSA_LORA_TARGETS = tuple(LORA_TARGETS.values())


def random_pusa_lora(transformer: PusaTransformer3DModel, rank: int = 4, seed: int = 0, std: float = 0.05) -> dict[str, torch.Tensor]:
    """A random LoRA in the Pusa training layout (``blocks.N.self_attn.q.lora_A.default.weight``) for ``transformer``."""
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    dim, ffn = cfg.num_attention_heads * cfg.attention_head_dim, cfg.ffn_dim
    shapes = {t: (dim, dim) for t in PUSA_LORA_TARGETS} | {"ffn.0": (ffn, dim), "ffn.2": (dim, ffn)}
    out = {}
    for block in range(cfg.num_layers):
        for target, (fan_out, fan_in) in shapes.items():
            key = f"blocks.{block}.{target}"
            out[f"{key}.lora_A.default.weight"] = torch.randn(rank, fan_in, generator=g) * std
            out[f"{key}.lora_B.default.weight"] = torch.randn(fan_out, rank, generator=g) * std
    return out


def random_kohya_lora(
    transformer: PusaTransformer3DModel, rank: int = 2, seed: int = 1, std: float = 0.05, network_alpha: float = 1.0
) -> dict[str, torch.Tensor]:
    """A random LoRA in LightX2V's layout (``diffusion_model.blocks.N.self_attn.q.lora_down.weight`` / ``lora_up``
    / ``alpha``, so its delta is ``alpha / rank * up @ down``) for ``transformer``."""
    out = {}
    for key, value in random_pusa_lora(transformer, rank, seed, std).items():
        module, part = key.removesuffix(".default.weight").rsplit(".", 1)
        out[f"diffusion_model.{module}.{'lora_down' if part == 'lora_A' else 'lora_up'}.weight"] = value
        out[f"diffusion_model.{module}.alpha"] = torch.tensor(network_alpha)
    return out


def random_tiny_components(seed: int = 0) -> PusaComponents:
    """Random-weight tiny components with a random Pusa LoRA: every code path, no meaningful pictures."""
    tokenizer = build_word_tokenizer(BASIC_WORDS)
    transformer = tiny_transformer(seed)
    load_lora(transformer, random_pusa_lora(transformer, seed=seed), alpha=1.0)
    return PusaComponents(
        transformer=transformer,
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(len(tokenizer), seed),
        tokenizer=tokenizer,
        name="random tiny model (untrained, for tests)",
        is_small=True,
        defaults=Settings(width=64, height=64, num_frames=9, fps=8, steps=2, cfg=3.0, lora_alpha=1.0),
        max_sequence_length=32,
        has_lora=True,
        example_prompts=EXAMPLE_PROMPTS,  # its videos are noise, but the examples show the small model's kind of input
    )
