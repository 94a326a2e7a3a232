"""The memory planner on the meta device with the real 14B config, its activation model, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import UMT5Config

from pusa_core import plan as plan_cli
from pusa_core.errors import PusaInputError
from pusa_core.loading import TRANSFORMER_14B_CONFIG
from pusa_core.placement import (
    ENV_VAR,
    GIB,
    Host,
    JobSize,
    PlanOptions,
    choose_placement,
    detect_host,
    gib,
    plan_job,
    plan_memory,
    simulated_gpus,
    simulated_host,
)
from pusa_core.placement.activations import estimate_activations
from pusa_core.placement.models import UMT5_XXL_PARAMS, build_meta_transformer, meta_models
from pusa_core.transformer import PusaTransformer3DModel

ROOT = Path(__file__).resolve().parents[1]
SMALL_MODEL = ROOT / "weights" / "pusa-tiny"
P480, P720 = (832, 480), (1280, 720)
CASES = [((48, 48), P480), ((48, 48), P720), ((24, 24), P480), ((24, 24), P720),
         ((80,), P480), ((80,), P720), ((24,), P480), ((24,), P720)]
# The planner's choice for each GPU set (2x24 GB cannot hold the bf16 14B + LoRA sharded, so it streams).
EXPECTED_KIND = {(48, 48): "shard", (24, 24): "offload", (80,): "single", (24,): "offload"}


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and still alive (CPU has no allocator stats)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if id(storage) not in self.live and storage.nbytes():
                    self.live[id(storage)] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, id(storage))
        return out


def _real_config() -> dict:
    return json.loads(TRANSFORMER_14B_CONFIG.read_text())


def _small_model_options() -> PlanOptions:
    """What the engine plans the shipped small model with on the CPU (its own configs, float32)."""
    def config(part: str) -> dict:
        return {k: v for k, v in json.loads((SMALL_MODEL / part / "config.json").read_text()).items()
                if not k.startswith("_")}

    text = UMT5Config(**config("text_encoder"))
    return PlanOptions.with_text_encoder_config(text, weights="fp32", lora_rank=32,
                                                transformer_config=config("transformer"), vae_config=config("vae"))


def _tensor_bytes(module: torch.nn.Module, lora: bool) -> int:
    named = [*module.named_parameters(), *module.named_buffers()]
    return sum(t.numel() * t.element_size() for n, t in named if ("lora_" in n) == lora)


def test_job_size_tokens_and_errors():
    job = JobSize.parse("1280x720", 81)
    assert (job.latent_frames, job.tokens) == (21, 21 * 45 * 80)
    assert JobSize(832, 480, 81).tokens == 21 * 30 * 52
    for args, field in ((("1280by720", 81), "size"), (("1000x720", 81), "width"), (("1280x720", 80), "frames")):
        with pytest.raises(PusaInputError) as err:
            JobSize.parse(*args)
        assert err.value.field == field and ("multiple of 16" in str(err.value) or "4k+1" in str(err.value)
                                             or "WIDTHxHEIGHT" in str(err.value))


def test_planner_weights_equal_the_sum_of_parameter_sizes():
    options = PlanOptions()
    models = meta_models(options)
    model, sizes = models.transformer, models.sizes
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n) == 14_288_491_584
    assert sizes.transformer == _tensor_bytes(model, lora=False)
    assert sizes.lora == _tensor_bytes(model, lora=True)
    # LoRA rank 512 on 8 attention linears (5120 -> 5120) and the two FFN linears (5120 <-> 13824), bf16.
    assert sizes.lora == 40 * 512 * (8 * (5120 + 5120) + 2 * (5120 + 13824)) * 2
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.bfloat16}
    # from_pretrained(torch_dtype=bf16) keeps these modules in fp32; the planner does the same.
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert model.blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16
    assert sizes.num_blocks == 40 and sizes.block == max(_tensor_bytes(b, False) + _tensor_bytes(b, True)
                                                        for b in model.blocks)


def test_fp8_sizes_come_from_layerwise_casting_and_keep_lora_bf16():
    bf16, fp8 = meta_models(PlanOptions()).sizes, meta_models(PlanOptions(weights="fp8"))
    model = fp8.transformer
    assert model.blocks[3].ffn.net[2].base_layer.weight.dtype == torch.float8_e4m3fn
    assert model.blocks[3].ffn.net[2].lora_A["default"].weight.dtype == torch.bfloat16
    assert model.patch_embedding.weight.dtype == torch.bfloat16  # diffusers skips embeddings and norms
    assert fp8.sizes.transformer == _tensor_bytes(model, lora=False)
    assert fp8.sizes.lora == bf16.lora
    assert 0.5 * bf16.transformer < fp8.sizes.transformer < 0.52 * bf16.transformer


def test_text_encoder_size_from_a_config_matches_the_umt5_xxl_default():
    xxl = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
    options = PlanOptions.with_text_encoder_config(xxl)
    assert options.text_encoder_params == UMT5_XXL_PARAMS
    assert options.text_encoder_largest_layer == 256384 * 4096
    assert meta_models(options).sizes.text_encoder == UMT5_XXL_PARAMS * 2


@pytest.mark.parametrize("gpus,size", CASES, ids=[f"{len(g)}x{g[0]}-{s[1]}p" for g, s in CASES])
def test_plans_for_the_readme_cases(gpus, size):
    job = JobSize(*size, 81)
    placement = choose_placement(simulated_gpus(gpus), job, simulated=True)
    plan = placement.memory
    assert placement.kind == EXPECTED_KIND[gpus], placement.reason
    assert plan.verdict == "ok", plan.problems
    gpu_loads = [d for d in plan.devices if d.budget is not None]
    assert gpu_loads and all(d.peak <= d.budget for d in gpu_loads)
    assert all(d.peak == d.resident + max(d.stages.values()) for d in gpu_loads)
    if placement.kind == "shard":
        assert all(d.blocks for d in gpu_loads), "every GPU gets blocks"
        assert sorted(b for d in gpu_loads for b in d.blocks) == list(range(40))
        placed = sum(d.weights.get("transformer", 0) + d.weights.get("lora", 0) for d in plan.devices)
        assert placed == plan.sizes.transformer + plan.sizes.lora
        assert set(plan.device_map.values()) == {0, 1}
    if placement.kind == "offload":
        host = next(d for d in plan.devices if d.device == "cpu")
        assert host.weights["transformer"] == plan.sizes.transformer and plan.text_streamed
    assert plan.vae_tiling == (placement.kind == "offload" and size == P720)


def test_shard_over_two_24gb_gpus_with_fp8():
    plan = plan_memory("shard", simulated_gpus([24, 24]), JobSize(832, 480, 81), PlanOptions(weights="fp8"),
                       simulated=True)
    assert plan.verdict == "ok"
    assert all(d.blocks for d in plan.devices) and all(d.peak <= d.budget for d in plan.devices)
    assert plan.activations.fp8_upcast == 5120 * 13824 * 2


def test_refusals_carry_suggestions_that_fit():
    single = plan_memory("single", simulated_gpus([24]), JobSize(1280, 720, 81), simulated=True)
    assert single.verdict == "refuse"
    assert "cuda:0 needs" in single.problems[0]
    assert any(s.startswith("offload (--placement offload)") for s in single.suggestions)

    shard = plan_memory("shard", simulated_gpus([24, 24]), JobSize(832, 480, 81), simulated=True)
    assert shard.verdict == "refuse"
    assert any("left over" in p for p in shard.problems)
    assert any(s.startswith("fp8 weights (--fp8)") for s in shard.suggestions)
    assert any("frames instead of 81" in s for s in shard.suggestions)
    frames = int(next(s for s in shard.suggestions if "frames instead" in s).split()[0])
    assert plan_memory("shard", simulated_gpus([24, 24]), JobSize(832, 480, frames), simulated=True).verdict == "ok"

    tiny_gpu = plan_memory("offload", simulated_gpus([6]), JobSize(1280, 720, 81), simulated=True)
    assert tiny_gpu.verdict == "refuse" and tiny_gpu.suggestions
    assert "Try:" in tiny_gpu.summary()


def test_a_job_on_an_applied_split_keeps_the_split():
    placement = choose_placement(simulated_gpus([48, 48]), JobSize(1280, 720, 81), simulated=True)
    smaller = plan_job(placement, JobSize(832, 480, 49))
    assert smaller.device_map == placement.memory.device_map
    assert smaller.peak_device.peak < placement.memory.peak_device.peak


def test_block_activation_model_is_conservative():
    """The planner's block working set covers what a real block allocates (bf16, flash SDPA on CPU)."""
    torch.manual_seed(0)
    cfg = dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=691, num_layers=1, text_dim=32, freq_dim=32)
    model = PusaTransformer3DModel(**cfg).to(torch.bfloat16).eval()
    options = PlanOptions(transformer_config=cfg, lora_rank=0)
    job = JobSize(256, 256, 9)
    dim, tokens = 256, job.tokens
    block = model.blocks[0]
    hidden = torch.randn(1, tokens, dim, dtype=torch.bfloat16)
    text = torch.randn(1, 512, dim, dtype=torch.bfloat16)
    temb = torch.randn(1, job.latent_frames, 6, dim)
    rope = model.rope(torch.zeros(1, 16, job.latent_frames, 32, 32))
    rope = tuple(r.float() for r in rope)
    tracker = LiveBytes()
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION), tracker:
        out = block(hidden, text, temb, rope)
    del out
    predicted = estimate_activations(job, options, meta_models(options)).block
    assert 0.6 * predicted < tracker.peak <= predicted


def test_vae_decode_model_is_conservative():
    torch.manual_seed(0)
    cfg = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True])
    vae = AutoencoderKLWan(**cfg).eval()
    options = PlanOptions(vae_config=cfg, lora_rank=0)
    job = JobSize(64, 64, 9)
    latents = torch.randn(1, 16, job.latent_frames, 8, 8)
    tracker = LiveBytes()
    with torch.no_grad(), tracker:
        out = vae.decode(latents).sample
    assert out.shape == (1, 3, 9, 64, 64)
    del out
    predicted = estimate_activations(job, options, meta_models(options)).vae_decode
    assert 0.6 * predicted < tracker.peak <= predicted


def test_cli_prints_the_plan():
    cmd = [sys.executable, "-m", "pusa_core.plan", "--gpus", "48,48", "--size", "1280x720", "--frames", "81", "--ranks", "1"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "75600 tokens" in out and "Placement: shard" in out
    assert "cuda:0" in out and "cuda:1" in out and "blocks 0-" in out and "-39" in out
    assert "Predicted peak:" in out and "Verdict: ok" in out


@pytest.mark.parametrize("flags,field", [
    (["--size", "1280by720"], "size"),
    (["--frames", "80"], "frames"),
    (["--gpus", "48,x"], "--gpus"),
    (["--placement", "everywhere"], "--placement"),
])
def test_cli_bad_flags_exit_2(flags, field, capsys):
    with pytest.raises(SystemExit) as exit_:
        plan_cli.main(flags)
    assert exit_.value.code == 2 and field in capsys.readouterr().err


def test_cli_reads_the_placement_from_its_environment_variable(monkeypatch, capsys):
    flags = ["--gpus", "48,48", "--size", "832x480"]
    monkeypatch.setenv(ENV_VAR, "offload")
    assert plan_cli.main(flags) == 0
    assert "Placement: offload - offload requested (--placement / PUSA_PLACEMENT)" in capsys.readouterr().out
    assert plan_cli.main([*flags, "--placement", "auto", "--ranks", "1"]) == 0  # the flag wins
    assert "Placement: shard - 2 GPUs" in capsys.readouterr().out
    monkeypatch.setenv(ENV_VAR, "gpu")
    with pytest.raises(SystemExit) as exit_:
        plan_cli.main(flags)
    assert exit_.value.code == 2
    assert "error: placement: 'gpu' is not a placement (--placement / PUSA_PLACEMENT)" in capsys.readouterr().err


def test_cli_table(capsys):
    assert plan_cli.main(["--table"]) == 0
    out = capsys.readouterr().out.strip()
    rows = out.splitlines()
    assert len(rows) == 2 + 8
    section = (ROOT / "README.md").read_text().split("## Where the 14B runs", 1)[1].split("\n## ", 1)[0]
    assert "\n".join(line for line in section.splitlines() if line.startswith("|")) == out
    assert rows[2].startswith("| 2x48 GB | 832x480 | shard | 19 / 21 |")
    assert all(row.endswith("| ok |") for row in rows[2:])


def test_gib_budget_is_below_the_card():
    (gpu,) = simulated_gpus([48])
    assert gpu.total == 48 * GIB and gpu.budget < gpu.total - GIB
    with pytest.raises(PusaInputError, match="gpus"):
        simulated_gpus([48, 0])
    assert build_meta_transformer(_real_config(), "bf16", 0).blocks[0].attn1.to_q.weight.device.type == "meta"


def test_cpu_jobs_are_budgeted_against_the_ram():
    """The reported case: 1920x1920, 201 frames of the small model on a 23 GB machine must be refused."""
    options, ram = _small_model_options(), simulated_host(23)
    assert ram.budget == 23 * GIB - int(2.3 * GIB)  # a tenth of the RAM is kept for the system
    big = plan_memory("cpu", [], JobSize(1920, 1920, 201), options, host=ram)
    cpu = big.devices[0]
    assert big.verdict == "refuse" and cpu.budget == ram.budget and cpu.peak > 30 * GIB
    assert big.problems == [f"cpu needs {gib(cpu.peak)} GiB of RAM but has 20.7 GiB to plan with "
                            "(23.0 GiB available, 2.3 GiB kept for the system)."]
    assert f"Predicted peak {gib(cpu.peak)} of 20.7 GiB on cpu: refuse." in big.summary()
    assert big.suggestions == ["117 frames instead of 201", "1280x720 instead of 1920x1920"]
    for job in (JobSize(1920, 1920, 117), JobSize(1280, 720, 201)):  # every suggestion fits
        assert plan_memory("cpu", [], job, options, host=ram).verdict == "ok"
    small = plan_memory("cpu", [], JobSize(64, 64, 17), options, host=ram)
    assert small.verdict == "ok" and small.problems == [] and small.devices[0].peak < 2 * GIB


def test_cpu_budget_counts_loaded_weights_back_and_reads_this_machine():
    options = _small_model_options()
    sizes = meta_models(options).sizes
    loaded = Host("host RAM", 16 * GIB, 8 * GIB, holds_weights=True)
    plan = plan_memory("cpu", [], JobSize(64, 64, 17), options, host=loaded)
    assert plan.devices[0].budget == 6 * GIB + sizes.transformer + sizes.lora + sizes.text_encoder + sizes.vae
    assert plan_memory("cpu", [], JobSize(64, 64, 17), options, host=Host("x", 4 * GIB, GIB)).verdict == "refuse"
    here = detect_host()
    assert 0 < here.available <= here.total and here.reserve >= 2 * GIB
    assert plan_memory("cpu", [], JobSize(64, 64, 17), options).host.total == here.total


def test_cpu_placement_plans_each_job_against_the_ram():
    options = _small_model_options()
    simulated = choose_placement([], JobSize(64, 64, 17), options=options, host=simulated_host(23))
    assert simulated.kind == "cpu" and simulated.memory.verdict == "ok"
    assert plan_job(simulated, JobSize(1920, 1920, 201)).verdict == "refuse"
    applied = choose_placement([], JobSize(64, 64, 17), options=options)
    job = plan_job(applied, JobSize(64, 64, 17))
    assert job.host.holds_weights and job.host.name == "host RAM"


def test_a_cpu_job_that_fits_nothing_says_so():
    plan = plan_memory("cpu", [], JobSize(64, 64, 17), _small_model_options(), host=Host("x", 2 * GIB, GIB))
    assert plan.verdict == "refuse" and plan.devices[0].budget == 0
    assert plan.suggestions == ["no smaller setting fits this machine's RAM; close other programs or use a GPU"]


def _block_peak(rank: int, merged: bool) -> tuple[int, int]:
    """(LiveBytes peak, tokens) of one bf16 block with a peft LoRA of ``rank`` (0: none), merged or not."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    from pusa_core.facts import LORA_TARGET_PATTERN

    torch.manual_seed(0)
    cfg = dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=691, num_layers=1, text_dim=32, freq_dim=32)
    model = PusaTransformer3DModel(**cfg).eval()
    if rank:
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGET_PATTERN), model)
    model = model.to(torch.bfloat16)
    if merged:
        for layer in model.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.merge()
    job = JobSize(256, 256, 9)
    hidden = torch.randn(1, job.tokens, 256, dtype=torch.bfloat16)
    text = torch.randn(1, 512, 256, dtype=torch.bfloat16)
    temb = torch.randn(1, job.latent_frames, 6, 256)
    rope = tuple(r.float() for r in model.rope(torch.zeros(1, 16, job.latent_frames, 32, 32)))
    tracker = LiveBytes()
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION), tracker:
        out = model.blocks[0](hidden, text, temb, rope)
    del out
    return tracker.peak, job.tokens


def test_unmerged_lora_branches_are_counted_and_merged_ones_cost_nothing():
    cfg = dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=691, num_layers=1, text_dim=32, freq_dim=32)
    job = JobSize(256, 256, 9)

    def predicted(merged: bool, rank: int = 64) -> int:
        options = PlanOptions(transformer_config=cfg, lora_rank=rank, lora_merged=merged)
        return estimate_activations(job, options, meta_models(options)).block

    plain, tokens = _block_peak(0, False)
    unmerged, _ = _block_peak(64, False)
    merged, _ = _block_peak(64, True)
    assert merged == plain  # merged weights: the pass is plain Wan's
    assert predicted(False) - predicted(True) == 16 * tokens * 64  # bf16: the measured 16 bytes per token per rank
    assert unmerged - plain <= predicted(False) - predicted(True)
    assert unmerged <= predicted(False) and merged <= predicted(True)


def test_the_plan_counts_the_jobs_adapters_when_they_run_unmerged():
    loaded = PlanOptions(lora_rank=512 + 64)  # Pusa's LoRA and LightX2V's, as the engine loads them for Fast
    offload = choose_placement(simulated_gpus([24]), requested="offload", simulated=True, options=loaded)
    assert offload.options.lora_merged is False  # offload streams the blocks: the engine cannot merge
    single = choose_placement(simulated_gpus([80]), requested="single", simulated=True)
    assert single.options.lora_merged is True
    job = JobSize(832, 480, 81)
    quality = plan_job(offload, job, lora_merged=False, active_lora_rank=512).activations.block
    fast = plan_job(offload, job, lora_merged=False, active_lora_rank=512 + 64).activations.block
    merged = plan_job(offload, job, lora_merged=True, active_lora_rank=512 + 64).activations.block
    assert fast - quality == 16 * job.tokens * 64 and quality - merged == 16 * job.tokens * 512
    with pytest.raises(PusaInputError, match="active_lora_rank: 600 must be a rank from 0 to 576"):
        PlanOptions(lora_rank=576, active_lora_rank=600)
