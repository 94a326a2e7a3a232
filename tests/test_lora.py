"""LoRA loading: every key layout in use reproduces the reference, and bad files fail loudly."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from pusa_core.loading import transformer_from_original_state_dict
from pusa_core.lora import LoraFormatError, load_lora, lora_modules, read_lora_file, to_diffusers_lora
from pusa_core.tiny_models import random_pusa_lora, tiny_transformer
from pusa_core.weights import lora_problems, preflight


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


def _underscored(state: dict) -> dict:
    """kohya / musubi-tuner names: ``lora_unet_`` and the module name with its dots turned into underscores."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("diffusion_model.").removeprefix("transformer.")
        m = re.fullmatch(r"(.+)\.(lora_down\.weight|lora_up\.weight|alpha|lora_A\.weight|lora_B\.weight)", key)
        out[f"lora_unet_{m[1].replace('.', '_')}.{m[2]}"] = value
    return out


def _diffusers_native(pusa: dict, base) -> dict:
    converted = to_diffusers_lora(pusa, base)
    return {f"transformer.{k}": v for k, v in converted.items()}


LAYOUTS = {
    "pusa": lambda d, base: d,
    "pusa_with_diffusion_model_prefix": lambda d, base: {f"diffusion_model.{k}": v for k, v in d.items()},
    "peft_without_adapter_name": lambda d, base: {k.replace(".default.", "."): v for k, v in d.items()},
    "kohya_with_alpha": lambda d, base: _kohya(d, 2.0),
    "diffusers_native": _diffusers_native,
    "kohya_underscore_with_alpha": lambda d, base: _underscored(_kohya(d, 2.0)),
    "diffusers_underscore": lambda d, base: _underscored(_diffusers_native(d, base)),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_every_layout_reproduces_reference(base, pusa_golden, pusa_layout, layout, suffix, tmp_path):
    t = pusa_golden[1]
    state = LAYOUTS[layout](pusa_layout, base)
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
        to_diffusers_lora({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, tiny_transformer())


def test_half_a_pair_is_rejected():
    with pytest.raises(LoraFormatError, match="has only lora_A"):
        to_diffusers_lora({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, 4)}, tiny_transformer())


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


def _forward(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([[900.0, 100.0]]), ctx).sample


def test_kohya_underscore_names_give_the_pusa_layout_output(tmp_path):
    reference = tiny_transformer()
    lora = random_pusa_lora(reference)
    expected_modules = load_lora(reference, lora, alpha=1.4)
    path = tmp_path / "musubi.safetensors"
    save_file(_underscored(_kohya(lora, 8.0)), path)
    assert "lora_unet_blocks_1_self_attn_q.lora_down.weight" in read_lora_file(path)

    model = tiny_transformer()
    assert load_lora(model, path, alpha=1.4) == expected_modules and len(expected_modules) == 20
    out = _forward(model)
    assert (out - _forward(reference)).abs().max() < 1e-6
    assert (out - _forward(tiny_transformer())).abs().max() > 1e-2  # the LoRA does change the output


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        (
            "blocks.1.cross_attn.k.lora_A.default.weight",
            (4, 31),
            "blocks.1.cross_attn.k: lora_A has shape (4, 31), but blocks.1.attn2.to_k is a Linear(32 -> 32) and needs (4, 32)",
        ),
        (
            "blocks.0.ffn.0.lora_B.default.weight",
            (64, 3),
            "blocks.0.ffn.0: lora_B has shape (64, 3), but blocks.0.ffn.net.0.proj is a Linear(32 -> 64) and needs (64, 4)",
        ),
    ],
)
def test_wrong_shape_names_the_file_module_and_both_shapes(key, shape, message, tmp_path):
    model = tiny_transformer()
    lora = random_pusa_lora(model)
    lora[key] = torch.zeros(shape)
    path = tmp_path / "lora.safetensors"
    save_file(lora, path)
    with pytest.raises(LoraFormatError) as error:
        load_lora(model, path)
    assert str(error.value) == f"{path}: {message}"
    assert not lora_modules(model)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_are_rejected_naming_file_and_key(bad, tmp_path):
    model = tiny_transformer()
    lora = random_pusa_lora(model)
    lora["blocks.0.ffn.2.lora_B.default.weight"][3, 1] = bad
    path = tmp_path / "lora.pt"
    torch.save(lora, path)
    with pytest.raises(LoraFormatError) as error:
        load_lora(model, path)
    assert str(error.value) == (
        f"{path}: blocks.0.ffn.2.lora_B.default.weight: holds NaN or infinite values; "
        "the file is damaged or its training diverged"
    )


def _save(state: dict, path) -> None:
    if path.suffix.lower() == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)


@pytest.mark.parametrize(
    ("suffix", "truncated_problem"),
    [
        (".pt", "truncated: the zip directory at its end is missing; download it again"),
        (".safetensors", "unreadable or truncated (Error while deserializing header: incomplete metadata, file not fully covered)"),
    ],
)
def test_preflight_catches_truncated_and_empty_lora_files(suffix, truncated_problem, tmp_path):
    good, truncated, empty = (tmp_path / f"{name}{suffix}" for name in ("good", "truncated", "empty"))
    _save(random_pusa_lora(tiny_transformer()), good)
    truncated.write_bytes(good.read_bytes()[:-64])
    empty.write_bytes(b"")
    assert lora_problems(good) == []
    assert lora_problems(truncated) == [f"{truncated}: {truncated_problem}"]
    assert lora_problems(empty) == [f"{empty}: empty"]
    for bad in (truncated, empty):
        with pytest.raises(LoraFormatError) as error:
            read_lora_file(bad)
        assert str(error.value) == lora_problems(bad)[0]
    # The app's start-up report refuses the file before any model loads.
    report = preflight(tmp_path / "weights", lora_path=truncated, hf_cache_dir=tmp_path / "hf", shipped_tiny_dir=None)
    assert report.source is None
    assert [item.problems for item in report.missing if item.label == "Pusa V1 LoRA"] == [(lora_problems(truncated)[0],)]


def test_preflight_names_legacy_torch_files_and_unknown_suffixes(tmp_path):
    lora = random_pusa_lora(tiny_transformer())
    legacy, text = tmp_path / "legacy.pt", tmp_path / "lora.txt"
    torch.save(lora, legacy, _use_new_zipfile_serialization=False)
    text.write_text("not a LoRA")
    assert lora_problems(legacy) == [
        f"{legacy}: not a zip-format torch.save file (an older torch format or another kind of file); "
        "save it again with torch.save, or as .safetensors"
    ]
    assert lora_problems(text) == [f"{text}: not a LoRA file name: expected .safetensors or a torch file (.pt, .pth, .bin)"]
    with pytest.raises(LoraFormatError, match="not a zip-format torch.save file"):
        read_lora_file(legacy)


@pytest.mark.parametrize("name", ["LORA.SAFETENSORS", "Lora.Pt"])
def test_suffixes_match_case_insensitively(name, tmp_path):
    lora = random_pusa_lora(tiny_transformer())
    path = tmp_path / name
    _save(lora, path)
    assert lora_problems(path) == []
    state = read_lora_file(path)
    assert state.keys() == lora.keys() and all(torch.equal(state[k], lora[k]) for k in lora)


def test_loading_builds_the_adapter_without_random_initialisation():
    """peft's low_cpu_mem_usage path: LoRA layers are created empty and take the file's tensors."""
    model = tiny_transformer()
    lora = random_pusa_lora(model)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    load_lora(model, lora)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.blocks[0].attn1.to_q.lora_A["pusa"].weight.data_ptr() == lora["blocks.0.self_attn.q.lora_A.default.weight"].data_ptr()
