"""Placement: choosing a plan, validating overrides, and the hooks that apply it (tiny models, CPU)."""

from __future__ import annotations

import pytest
import torch
from accelerate import cpu_offload
from peft import LoraConfig, inject_adapter_in_model
from transformers import UMT5Config, UMT5EncoderModel

from pusa_core.errors import PusaInputError
from pusa_core.placement import (
    ENV_VAR,
    JobSize,
    PlanOptions,
    StageDevices,
    apply_placement,
    choose_placement,
    requested_kind,
    simulated_gpus,
    simulated_host,
)
from pusa_core.placement.apply import dispatch_transformer, offload_transformer, stream_text_encoder
from pusa_core.facts import LORA_TARGET_PATTERN
from pusa_core.placement.models import build_meta_transformer, enable_fp8_storage, module_bytes
from pusa_core.transformer import PusaTransformer3DModel

TINY = dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2, text_dim=16, freq_dim=32)
TINY_LORA = LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGET_PATTERN)
TINY_JOB = JobSize(32, 32, 9)  # latents [1, 16, 3, 4, 4]


def _tiny_model() -> PusaTransformer3DModel:
    torch.manual_seed(0)
    model = PusaTransformer3DModel(**TINY).eval()
    inject_adapter_in_model(TINY_LORA, model)
    with torch.no_grad():  # peft starts B at zero; a random B makes the LoRA path count
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    latents = torch.randn(1, 16, 3, 4, 4)
    timestep = torch.tensor([[0.0, 420.0, 999.0]])  # one timestep per latent frame
    text = torch.randn(1, 7, 16)
    return latents, timestep, text


def _run(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    latents, timestep, text = _inputs()
    with torch.no_grad():
        return model(latents.to(dtype), timestep, text.to(dtype), return_dict=False)[0]


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return _run(_tiny_model())


# accelerate needs the top-level parameter in the map (its own maps name it) but warns it is no module.
@pytest.mark.filterwarnings("ignore:The following device_map keys do not match")
def test_accelerate_device_map_with_a_disk_offloaded_block_matches(reference, tmp_path):
    model = _tiny_model()
    device_map = {"rope": "cpu", "patch_embedding": "cpu", "condition_embedder": "cpu", "scale_shift_table": "cpu",
                  "blocks.0": "cpu", "blocks.1": "disk", "norm_out": "cpu", "proj_out": "cpu"}
    device = dispatch_transformer(model, device_map, offload_dir=tmp_path)
    assert device == torch.device("cpu")
    assert model.blocks[1]._hf_hook.offload and model.blocks[1].attn1.to_q.base_layer.weight.device.type == "meta"
    assert model.blocks[0]._hf_hook.execution_device == "cpu"
    out = _run(model)
    assert out.shape == (1, 16, 3, 4, 4)
    assert torch.equal(out, reference)


def test_accelerate_cpu_offload_hooks_match(reference):
    model = cpu_offload(_tiny_model(), execution_device=torch.device("cpu"))
    assert model.blocks[0].attn1.to_q.base_layer.weight.device.type == "meta"
    assert torch.equal(_run(model), reference)


def test_diffusers_group_offloading_matches(reference):
    model = _tiny_model()
    offload_transformer(model, torch.device("cpu"))
    assert all(hasattr(block, "_diffusers_hook") for block in model.blocks)
    assert torch.equal(_run(model), reference)


def test_streamed_text_encoder_matches():
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu")
    encoder = UMT5EncoderModel(config).eval()
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        expected = encoder(ids).last_hidden_state
        stream_text_encoder(encoder, torch.device("cpu"))
        assert torch.equal(encoder(ids).last_hidden_state, expected)
    assert hasattr(encoder.encoder.block[0].layer[0].SelfAttention.q, "_diffusers_hook")


def test_fp8_storage_real_bytes_equal_the_meta_plan():
    """The planner's fp8 sizes are what layerwise casting really stores; the output stays close."""
    model = _tiny_model()
    keep = set(model._keep_in_fp32_modules)
    for name, param in model.named_parameters():
        if not keep.intersection(name.split(".")):
            param.data = param.data.to(torch.bfloat16)
    bf16_out = _run(model, torch.bfloat16).float()
    enable_fp8_storage(model)
    assert model.blocks[0].ffn.net[2].base_layer.weight.dtype == torch.float8_e4m3fn
    assert model.blocks[0].ffn.net[2].lora_B["default"].weight.dtype == torch.bfloat16
    meta = build_meta_transformer(TINY, "fp8", lora_rank=0)
    with torch.device("meta"):
        inject_adapter_in_model(TINY_LORA, meta, low_cpu_mem_usage=True)
    for name, param in meta.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.bfloat16)
    assert module_bytes(model) == module_bytes(meta)
    fp8_out = _run(model, torch.bfloat16).float()
    assert torch.isfinite(fp8_out).all()
    assert (fp8_out - bf16_out).norm() / bf16_out.norm() < 0.1


def test_requested_kind_is_validated_and_the_error_names_the_flag_and_its_variable():
    assert requested_kind(None) is None and requested_kind("") is None and requested_kind("auto") is None
    assert requested_kind(" Offload ") == "offload"
    for bad in ("gpu", "two"):
        with pytest.raises(PusaInputError) as err:
            requested_kind(bad)
        assert err.value.field == "placement"
        assert str(err.value) == (f"placement: {bad!r} is not a placement (--placement / PUSA_PLACEMENT); "
                                  "use one of auto, shard, single, offload, cpu, cfg-parallel, sequence-parallel")


def test_choose_without_gpus_is_cpu_and_bad_overrides_are_refused():
    placement = choose_placement([], TINY_JOB)
    assert placement.kind == "cpu" and "no CUDA GPU" in placement.reason
    assert placement.memory.options.weights == "fp32"
    with pytest.raises(PusaInputError, match="needs a CUDA GPU"):
        choose_placement([], TINY_JOB, requested="single")
    with pytest.raises(PusaInputError, match="two or more GPUs"):
        choose_placement(simulated_gpus([48]), TINY_JOB, requested="shard", simulated=True)
    with pytest.raises(PusaInputError, match="fp8"):
        choose_placement([], TINY_JOB, requested="cpu", options=PlanOptions(weights="fp8"))


def test_simulated_host_sizes():
    ram = simulated_host(32)
    assert ram.total == ram.available == 32 * 2**30 and ram.name == "simulated 32 GB RAM"
    for bad in (0, -4, "32", True):
        with pytest.raises(PusaInputError, match="ram: .* is not a RAM size; give positive GB, e.g. 32"):
            simulated_host(bad)


def test_requested_cpu_placement_keeps_the_simulated_ram():
    ram = simulated_host(8)
    placement = choose_placement(simulated_gpus([80]), TINY_JOB, requested="cpu", simulated=True, host=ram)
    assert placement.kind == "cpu" and placement.host == ram and placement.memory.host == ram
    assert placement.memory.devices[0].budget == ram.budget


def test_requested_override_and_reasons_and_the_environment_is_left_to_the_caller(monkeypatch):
    two, job = simulated_gpus([48, 48]), JobSize(1280, 720, 81)
    forced = choose_placement(two, job, requested="offload", simulated=True)
    assert forced.kind == "offload" and forced.reason == f"offload requested (--placement / {ENV_VAR})"
    monkeypatch.setenv(ENV_VAR, "offload")  # the app and the plan CLI read it and pass it as ``requested``
    assert choose_placement(two, job, simulated=True).kind == "shard"
    auto = choose_placement(simulated_gpus([24, 24]), job, simulated=True)
    assert auto.kind == "offload" and "shard would need" in auto.reason and "streamed to cuda:0" in auto.reason


def test_apply_cpu_placement_on_tiny_components(reference):
    options = PlanOptions(transformer_config=TINY, lora_rank=4)
    placement = choose_placement([], TINY_JOB, options=options)
    model = _tiny_model().to(torch.bfloat16)
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                               num_heads=4)).to(torch.bfloat16)
    vae = torch.nn.Conv3d(16, 3, 1).to(torch.bfloat16)
    devices = apply_placement(placement, model, text_encoder, vae)
    cpu = torch.device("cpu")
    assert devices == StageDevices(cpu, cpu, cpu)
    assert {p.dtype for m in (model, text_encoder, vae) for p in m.parameters()} == {torch.float32}
    assert (_run(model) - reference).abs().max() < 0.05  # bf16 round trip of the weights


def test_simulated_plans_cannot_be_applied():
    placement = choose_placement(simulated_gpus([80]), TINY_JOB, simulated=True)
    with pytest.raises(PusaInputError, match="simulated"):
        apply_placement(placement, _tiny_model(), torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
