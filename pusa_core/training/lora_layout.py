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

ADAPTER_NAME = "default"

# diffusers module suffix -> original Wan suffix, for just the modules Pusa trains. This is the
# inverse of the renames in diffusers' convert_wan_transformer_to_diffusers for these linears.
DIFFUSERS_TO_WAN: dict[str, str] = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
# Anchored so that nothing else (e.g. the I2V models' add_k_proj) is caught.
TARGET_MODULES = r"blocks\.\d+\.(" + "|".join(re.escape(k) for k in DIFFUSERS_TO_WAN) + r")"

_PEFT_KEY = re.compile(r"^blocks\.(?P<block>\d+)\.(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")


def lora_config(rank: int) -> LoraConfig:
    """peft config with ``lora_alpha == r``: scale 1, so the saved delta is exactly ``B @ A``."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGET_MODULES, init_lora_weights=True)


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


def pusa_lora_state_dict(transformer: torch.nn.Module, adapter_name: str = ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """The trained adapter of ``transformer`` in the Pusa key layout."""
    return to_pusa_layout(get_peft_model_state_dict(transformer, adapter_name=adapter_name))
