"""LoRA loading: every key layout in use reproduces the reference, and bad files fail loudly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pusa_core.loading import transformer_from_original_state_dict
from pusa_core.lora import LoraFormatError, load_lora, lora_modules, read_lora_file, to_diffusers_lora
from pusa_core.tiny_models import random_pusa_lora, tiny_transformer


@pytest.fixture
def base(pusa_golden, golden_config):
    t = pusa_golden[1]
    return transformer_from_original_state_dict({k[4:]: v for k, v in t.items() if k.startswith("dit.")}, golden_config, torch.float32)


@pytest.fixture(scope="module")
def pusa_layout(pusa_golden):
    return {k[5:]: v for k, v in pusa_golden[1].items() if k.startswith("lora.")}


def _kohya(pusa: dict, network_alpha: float) -> dict:
    """lora_down/lora_up with an .alpha (scale alpha/rank): B is pre-divided so the product is unchanged."""
    out = {}
    for key, value in pusa.items():
        module = key.split(".lora_")[0]
        if ".lora_A." in key:
            rank = value.shape[0]
            out[f"diffusion_model.{module}.lora_down.weight"] = value
            out[f"diffusion_model.{module}.alpha"] = torch.tensor(network_alpha)
        else:
            out[f"diffusion_model.{module}.lora_up.weight"] = value * (rank / network_alpha)
    return out


def _diffusers_native(pusa: dict) -> dict:
    converted = to_diffusers_lora(pusa)
    return {f"transformer.{k}": v for k, v in converted.items()}


LAYOUTS = {
    "pusa": lambda d: d,
    "pusa_with_diffusion_model_prefix": lambda d: {f"diffusion_model.{k}": v for k, v in d.items()},
    "peft_without_adapter_name": lambda d: {k.replace(".default.", "."): v for k, v in d.items()},
    "kohya_with_alpha": lambda d: _kohya(d, 2.0),
    "diffusers_native": _diffusers_native,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_every_layout_reproduces_reference(base, pusa_golden, pusa_layout, layout, suffix, tmp_path):
    t = pusa_golden[1]
    state = LAYOUTS[layout](pusa_layout)
    path = tmp_path / f"lora{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    modules = load_lora(base, path, alpha=1.4)
    assert len(modules) == 10 * len(base.blocks)
    with torch.no_grad():
        out = base(t["forward.x"], t["forward.timestep"], t["context.positive"]).sample
    assert (out - t["forward.out_lora_1.4"]).abs().max() < 1e-4


def test_reloading_replaces_instead_of_stacking(base, pusa_golden, pusa_layout):
    t = pusa_golden[1]
    load_lora(base, pusa_layout, alpha=1.4)
    load_lora(base, pusa_layout, alpha=1.4)
    with torch.no_grad():
        out = base(t["forward.x"], t["forward.timestep"], t["context.positive"]).sample
    assert (out - t["forward.out_lora_1.4"]).abs().max() < 1e-4


def test_unknown_keys_are_rejected():
    with pytest.raises(LoraFormatError, match="are not LoRA weights"):
        to_diffusers_lora({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)})


def test_half_a_pair_is_rejected():
    with pytest.raises(LoraFormatError, match="has only lora_A"):
        to_diffusers_lora({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, 4)})


def test_lora_for_another_model_is_rejected():
    model = tiny_transformer()
    lora = random_pusa_lora(model)
    lora["blocks.7.self_attn.q.lora_A.default.weight"] = torch.zeros(4, 32)
    lora["blocks.7.self_attn.q.lora_B.default.weight"] = torch.zeros(32, 4)
    with pytest.raises(LoraFormatError, match="do not exist in this transformer"):
        load_lora(model, lora)
    assert not lora_modules(model)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="LoRA file not found"):
        read_lora_file(tmp_path / "nope.safetensors")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(LoraFormatError, match="no LoRA weights"):
        load_lora(tiny_transformer(), tmp_path / "empty.pt")
