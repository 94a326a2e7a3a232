"""Pusa LoRA: read every key layout in use, load it as a peft adapter, set alpha exactly.

Alpha is a plain multiplier on the trained delta, ``W + alpha * (B @ A)`` with no division by rank.
In peft terms the adapter is loaded with scale 1 (lora_alpha == r) and alpha is the adapter weight
given to ``set_adapters``, which *sets* the scale: changing alpha never accumulates.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import load_file

from .facts import DEFAULT_ALPHA

ADAPTER_NAME = "pusa"

# One LoRA'd linear: "<module>.<lora_A|lora_B>[.<adapter>].weight" or kohya "<module>.<lora_down|lora_up>.weight".
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$")
_KOHYA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_down|lora_up)\.weight$")
_KOHYA_ALPHA = re.compile(r"^(?P<module>.+)\.alpha$")
_PREFIXES = ("diffusion_model.", "model.diffusion_model.", "transformer.", "base_model.model.")


class LoraFormatError(ValueError):
    """The file is not a LoRA for this transformer; the message says what was found."""


def read_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a LoRA state dict from ``.safetensors`` or a torch pickle (``.pt``/``.pth``/``.bin``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LoraFormatError(f"{path} does not hold a flat dict of tensors")
    return state


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _to_diffusers_module(module: str) -> str:
    """Original Wan module names (``blocks.0.self_attn.q``) -> diffusers names (``blocks.0.attn1.to_q``)."""
    if ".attn1." in module or ".attn2." in module or ".ffn.net." in module:
        return module
    # diffusers' own checkpoint converter knows Wan's renames; reuse it on a dummy weight key.
    converted = convert_wan_transformer_to_diffusers({f"{module}.weight": torch.empty(0)})
    return next(iter(converted))[: -len(".weight")]


def to_diffusers_lora(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalize any supported layout to ``<diffusers module>.lora_A.weight`` / ``.lora_B.weight`` at scale 1.

    Supported: the Pusa training layout (``blocks.0.self_attn.q.lora_A.default.weight``), the same with a
    ``diffusion_model.`` prefix, kohya ``lora_down``/``lora_up`` with optional ``.alpha`` (scale alpha/rank,
    folded into B here), and diffusers-native keys (optionally prefixed ``transformer.``).
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    unknown = []
    for raw_key, tensor in state_dict.items():
        key = _strip_prefix(raw_key)
        if m := _PEFT_KEY.match(key):
            pairs.setdefault(m["module"], {})["A" if m["part"] == "lora_A" else "B"] = tensor
        elif m := _KOHYA_KEY.match(key):
            pairs.setdefault(m["module"], {})["A" if m["part"] == "lora_down" else "B"] = tensor
        elif m := _KOHYA_ALPHA.match(key):
            alphas[m["module"]] = float(tensor)
        else:
            unknown.append(raw_key)
    if unknown:
        raise LoraFormatError(
            f"{len(unknown)} keys are not LoRA weights (e.g. {unknown[0]!r}); expected "
            "'<module>.lora_A[.default].weight', '<module>.lora_down.weight' or '<module>.alpha'"
        )
    if not pairs:
        raise LoraFormatError("the file holds no LoRA weights")

    out: dict[str, torch.Tensor] = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise LoraFormatError(f"{module}: has only lora_{'A' if 'A' in ab else 'B'}; both halves are needed")
        a, b = ab["A"], ab["B"]
        if module in alphas:
            b = b * (alphas[module] / a.shape[0])
        name = _to_diffusers_module(module)
        out[f"{name}.lora_A.weight"] = a
        out[f"{name}.lora_B.weight"] = b
    return out


def lora_modules(transformer: torch.nn.Module, adapter_name: str = ADAPTER_NAME) -> set[str]:
    """Names of the modules that carry ``adapter_name``."""
    return {
        name
        for name, module in transformer.named_modules()
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and adapter_name in module.lora_A
    }


def load_lora(
    transformer: torch.nn.Module,
    source: str | Path | dict[str, torch.Tensor],
    alpha: float = DEFAULT_ALPHA,
    adapter_name: str = ADAPTER_NAME,
) -> set[str]:
    """Load a LoRA into ``transformer`` as the peft adapter ``adapter_name`` at ``alpha``; return its modules.

    Fails loudly when any module named in the file did not get an adapter (diffusers' own loader
    silently loads nothing for some layouts).
    """
    state = read_lora_file(source) if isinstance(source, (str, Path)) else source
    converted = to_diffusers_lora(state)
    expected = {key[: -len(".lora_A.weight")] for key in converted if key.endswith(".lora_A.weight")}
    modules = dict(transformer.named_modules())
    missing_targets = sorted(m for m in expected if m not in modules)
    if missing_targets:
        raise LoraFormatError(
            f"{len(missing_targets)} LoRA modules do not exist in this transformer (e.g. {missing_targets[0]!r}): "
            "the LoRA was trained for a different model"
        )
    if adapter_name in getattr(transformer, "peft_config", {}):
        transformer.delete_adapters(adapter_name)
    transformer.load_lora_adapter(converted, prefix=None, adapter_name=adapter_name)
    loaded = lora_modules(transformer, adapter_name)
    if loaded != expected:
        absent = sorted(expected - loaded)
        raise LoraFormatError(f"the LoRA did not attach to {len(absent)} modules (e.g. {absent[0]!r})")
    set_lora_alpha(transformer, alpha, adapter_name)
    return loaded


def set_lora_alpha(transformer: torch.nn.Module, alpha: float, adapter_name: str = ADAPTER_NAME) -> None:
    """Set the LoRA multiplier to exactly ``alpha`` (never relative to the previous value)."""
    transformer.set_adapters([adapter_name], weights=[float(alpha)])
