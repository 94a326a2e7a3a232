"""The Pusa LoRA's targets and its saved key layout.

Training uses peft on diffusers' module names; the file is written under the original Wan names
that Pusa's own training code saves (``blocks.0.self_attn.q.lora_A.default.weight``), so it loads
through :func:`pusa_core.lora.load_lora` exactly like the released ``pusa_v1.pt``.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from ..facts import LORA_TARGET_PATTERN, LORA_TARGETS

# peft's own default adapter name: training makes one adapter and saves it in the Pusa layout. (The
# app loads the saved file as the adapter named by pusa_core.lora.ADAPTER_NAME.)
TRAINING_ADAPTER = "default"
DIFFUSERS_TO_WAN = LORA_TARGETS

_PEFT_KEY = re.compile(r"^blocks\.(?P<block>\d+)\.(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")


def lora_config(rank: int) -> LoraConfig:
    """peft config with ``lora_alpha == r``: scale 1, so the saved delta is exactly ``B @ A``."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGET_PATTERN, init_lora_weights=True)


def to_pusa_layout(peft_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``blocks.0.attn1.to_q.lora_A.weight`` -> ``blocks.0.self_attn.q.lora_A.default.weight``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in peft_state.items():
        match = _PEFT_KEY.match(key)
        if match is None or match["module"] not in DIFFUSERS_TO_WAN:
            raise ValueError(f"unexpected LoRA key {key!r}: only {sorted(DIFFUSERS_TO_WAN)} are Pusa targets")
        name = f"blocks.{match['block']}.{DIFFUSERS_TO_WAN[match['module']]}.{match['part']}.default.weight"
        out[name] = tensor.detach().to("cpu", torch.float32).contiguous()
    return out


def pusa_lora_state_dict(transformer: torch.nn.Module, adapter_name: str = TRAINING_ADAPTER) -> dict[str, torch.Tensor]:
    """The trained adapter of ``transformer`` in the Pusa key layout."""
    return to_pusa_layout(get_peft_model_state_dict(transformer, adapter_name=adapter_name))
