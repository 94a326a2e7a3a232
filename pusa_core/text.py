"""Prompt -> UMT5 embeddings, as diffusers' WanPipeline does it (cleaned text, padded, zero past the end)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from transformers import PreTrainedTokenizerBase

from .facts import TEXT_TOKENS as MAX_SEQUENCE_LENGTH


def token_count(tokenizer: PreTrainedTokenizerBase, prompt: str) -> int:
    """Tokens the encoder would need for ``prompt`` whole (cleaned as for encoding, special tokens included)."""
    return len(tokenizer(prompt_clean(prompt), add_special_tokens=True).input_ids)


@torch.no_grad()
def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: torch.nn.Module,
    prompts: Sequence[str],
    max_length: int = MAX_SEQUENCE_LENGTH,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Embeddings ``[len(prompts), max_length, dim]``; rows past each prompt are 0.

    ``device`` is where the encoder runs (default: where its weights are; pass it when they are offloaded).
    """
    cleaned = [prompt_clean(p) for p in prompts]
    batch = tokenizer(
        cleaned,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = device or next(text_encoder.parameters()).device
    mask = batch.attention_mask.to(device)
    hidden = text_encoder(batch.input_ids.to(device), mask).last_hidden_state
    # Wan was trained with zeros past the real length, not the encoder's outputs at padding positions.
    return hidden * mask[..., None].to(hidden.dtype)
