"""The planner's cfg-parallel and sequence-parallel placements (real 14B config, meta device), auto's
choice between launches, and the plan CLI's step time and README table."""

from __future__ import annotations

import pytest
import torch

from pusa_core import plan as plan_cli
from pusa_core.errors import PusaInputError
from pusa_core.placement import (JobSize, Placement, PlanOptions, apply_placement, choose_placement, plan_job,
                                 plan_memory, simulated_gpus, simulated_host)
from pusa_core.placement.activations import (ATTENTION_STAGE_BYTES, CROSS_ATTENTION_TEXT_BYTES, FFN_HIDDEN_BYTES,
                                             FFN_STAGE_BYTES, ULYSSES_STAGING_BYTES, estimate_activations)
from pusa_core.placement.models import meta_models
from tests.support.processes import ROOT

P480, P720 = JobSize(832, 480, 81), JobSize(1280, 720, 81)


def choose(gpus: tuple[float, ...], job: JobSize, cfg: float = 5.0, ranks: int | None = None, **kw) -> Placement:
    return choose_placement(simulated_gpus(gpus), job, simulated=True, cfg=cfg, ranks=ranks, **kw)


@pytest.mark.parametrize("gpus,job,cfg,kind,degrees,weights", [
    ((80, 80), P480, 5.0, "cfg-parallel", (2, 1), "bf16"),
    ((80, 80), P480, 1.0, "sequence-parallel", (1, 2), "bf16"),
    ((80, 80, 80, 80), P720, 5.0, "cfg-parallel", (2, 2), "bf16"),  # 2 cfg groups x 2 sequence ranks
    ((80, 80, 80), P480, 5.0, "sequence-parallel", (1, 3), "bf16"),  # cfg-parallel needs an even number
    ((48, 48), P720, 5.0, "sequence-parallel", (1, 2), "bf16"),  # cfg-parallel bf16 does not fit; fp8 is not 1.5x faster
    ((36, 36), P720, 5.0, "cfg-parallel", (2, 1), "fp8"),  # no parallel placement fits in bf16
    ((24, 24), P480, 5.0, "offload", (1, 1), "bf16"),  # nothing parallel fits, not even in fp8
], ids=["2x80-cfg", "2x80-cfg1", "4x80-2x2", "3x80", "2x48-720p", "2x36-720p-fp8", "2x24"])
def test_auto_picks_the_fastest_placement_that_fits(gpus, job, cfg, kind, degrees, weights):
    placement = choose(gpus, job, cfg)
    assert (placement.kind, (placement.cfg_degree, placement.sequence_degree)) == (kind, degrees), placement.reason
    assert placement.options.weights == weights and placement.memory.verdict == "ok"
    assert "predicted step" in placement.reason


def test_auto_says_why():
    cfg = choose((80, 80), P480)
    assert cfg.reason.startswith("2 GPUs (simulated 80 GB (80.0 GiB free), simulated 80 GB (80.0 GiB free)), one "
                                 "process each (torchrun --nproc-per-node 2): each runs one of a step's two guidance "
                                 "passes (cfg-parallel); predicted step 0.50x one GPU's over PCIe 4 x16 (against ")
    assert "shard 1.01x" in cfg.reason and "sequence-parallel 0.62x" in cfg.reason
    assert choose((80, 80), P480, cfg=1.0).reason.endswith("; cfg 1 has no second pass for cfg-parallel")
    hd = choose((48, 48), P720)
    assert "cfg-parallel would need 43.8 GiB on cuda:0, more than its 42.3 GiB" in hd.reason
    assert "cfg-parallel fp8 0.50x" in hd.reason  # the faster fp8 option, named but not taken
    fp8 = choose((36, 36), P720)
    assert ", fp8 weight storage: each runs one of a step's two guidance passes" in fp8.reason
    assert "sequence-parallel would need 39.9 GiB on cuda:0" in fp8.reason
    small = choose((24, 24), P480)
    assert small.reason.startswith("shard would need") and "cfg-parallel would need 37.0 GiB" in small.reason


def test_one_process_keeps_todays_choice_and_torchrun_ranks_choose_among_the_parallel_kinds():
    assert choose((80, 80), P480, ranks=1).kind == "shard"
    assert choose_placement(simulated_gpus([80, 80]), P480, simulated=True).kind == "shard"  # the default: 1
    two = choose((80, 80, 80, 80), P480, ranks=2)
    assert (two.kind, len(two.gpus), [d.device for d in two.memory.devices]) == ("cfg-parallel", 2, ["cuda:0", "cuda:1"])
    assert "torchrun" not in two.reason  # already launched
    refused = choose((24, 24), P480, ranks=2)
    assert (refused.kind, refused.memory.verdict) == ("cfg-parallel", "refuse")
    assert refused.reason.endswith("; predicted not to fit (see the plan)") and refused.memory.suggestions


@pytest.mark.parametrize("call,field,message", [
    (dict(requested="cfg-parallel", ranks=1), "placement",
     "'cfg-parallel' runs one process per GPU; start them with torchrun --nproc-per-node 2, or use shard, single or "
     "offload in one process"),
    (dict(requested="shard", ranks=2), "placement",
     "'shard' runs in one process, and this job has 2; use cfg-parallel or sequence-parallel, or start one process for it"),
    (dict(requested="cfg-parallel", cfg=1.0, ranks=2), "cfg",
     "cfg-parallel runs the unconditional pass on a second GPU, and at cfg 1 there is none; use sequence-parallel, "
     "which is the one for cfg 1"),
    (dict(ranks=3), "placement", "3 processes need a GPU each and 2 are visible"),
    (dict(ranks=0), "ranks", "0 is not a number of processes; give 1 or more"),
    (dict(link="infiniband"), "link", "'infiniband' is not one of pcie4, nvlink"),
])
def test_impossible_requests_are_refused_with_the_launch_that_would_work(call, field, message):
    with pytest.raises(PusaInputError) as err:
        choose((80, 80), P480, **{"ranks": None, **call})
    assert (err.value.field, str(err.value)) == (field, f"{field}: {message}")


def test_plan_memory_checks_the_gpu_count_of_the_parallel_kinds():
    with pytest.raises(PusaInputError, match="'cfg-parallel' splits the GPUs into two guidance groups of equal size, "
                                             "so it needs an even number of them, not 3; use 'sequence-parallel'"):
        plan_memory("cfg-parallel", simulated_gpus([80] * 3), P480, simulated=True)
    with pytest.raises(PusaInputError, match="'sequence-parallel' runs one process on each of two or more GPUs"):
        plan_memory("sequence-parallel", simulated_gpus([80]), P480, simulated=True)


def test_every_rank_holds_the_whole_transformer_and_one_rank_the_text_encoder_and_vae():
    plan = choose((80, 80), P480).memory
    sizes, acts = plan.sizes, plan.activations
    rank0, rank1 = plan.devices
    for d in (rank0, rank1):
        assert d.weights["transformer"] == sizes.transformer and d.weights["lora"] == sizes.lora
        assert d.blocks == tuple(range(40))
        assert d.stages["denoise"] == acts.transformer + acts.sampler + acts.cfg_exchange
    assert rank0.weights["text encoder"] == sizes.text_encoder and rank0.weights["vae"] == sizes.vae
    assert set(rank1.weights) == {"transformer", "lora"}
    assert (plan.text_device, plan.vae_device, plan.text_streamed) == ("cuda:0", "cuda:0", False)
    assert rank0.notes == ["rank 0: all 40 blocks, conditional pass", "text encoder", "VAE"]
    assert rank1.notes == ["rank 1: all 40 blocks, unconditional pass"]
    four = choose((80,) * 4, P480).memory
    assert [d.notes[0] for d in four.devices] == [
        "rank 0: all 40 blocks, conditional pass, tokens 1/2", "rank 1: all 40 blocks, conditional pass, tokens 2/2",
        "rank 2: all 40 blocks, unconditional pass, tokens 1/2", "rank 3: all 40 blocks, unconditional pass, tokens 2/2"]


def test_the_text_encoder_is_streamed_when_no_rank_has_room_for_it():
    plan = choose((48, 48), P720).memory
    assert plan.kind == "sequence-parallel" and plan.text_streamed and "text encoder" not in plan.devices[0].weights
    assert "text encoder (streamed layer by layer)" in plan.devices[0].notes


def test_sequence_parallel_activations_are_the_ranks_slice_of_the_tokens():
    options = PlanOptions()
    models = meta_models(options)
    whole, half = (estimate_activations(P720, options, models, n) for n in (1, 2))
    local, dim, ffn = 75600 // 2, 5120, 13824
    attention = (ATTENTION_STAGE_BYTES + ULYSSES_STAGING_BYTES) * local * dim
    ffn_stage = FFN_STAGE_BYTES * local * dim + FFN_HIDDEN_BYTES * local * ffn
    assert half.block == max(attention, ffn_stage) + CROSS_ATTENTION_TEXT_BYTES * 512 * dim
    assert 0.5 * whole.block < half.block < 0.65 * whole.block  # attention with Ulysses staging is the larger stage
    # The whole patch-embedded input and rotary tables stay alive (the slices are views of them).
    assert half.stream - whole.stream == 2 * 75600 * dim - 4 * local * dim
    assert (half.modulation, half.sampler, half.fp8_upcast) == (whole.modulation, whole.sampler, whole.fp8_upcast)
    padded = estimate_activations(JobSize(848, 480, 9), options, models, 4)  # 4,770 tokens: 1,193 a rank
    assert padded.block == max((ATTENTION_STAGE_BYTES + ULYSSES_STAGING_BYTES) * 1193 * dim,
                               FFN_STAGE_BYTES * 1193 * dim + FFN_HIDDEN_BYTES * 1193 * ffn) + 16 * 512 * dim


def test_a_job_on_a_parallel_placement_keeps_its_ranks():
    placement = choose((80,) * 4, P720)
    job = plan_job(placement, JobSize(832, 480, 49))
    assert (job.kind, job.cfg_degree, job.sequence_degree, len(job.devices)) == ("cfg-parallel", 2, 2, 4)
    assert job.peak_device.peak < placement.memory.peak_device.peak


def test_processes_on_the_cpu_share_the_job_and_the_ram():
    options = PlanOptions(transformer_config=dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=64,
                                                  num_layers=2, text_dim=32, freq_dim=32), lora_rank=0)
    ram, job = simulated_host(16), JobSize(64, 64, 9)
    one = choose_placement([], job, options=options, host=ram)
    cfg = choose_placement([], job, options=options, host=ram, ranks=2)
    seq = choose_placement([], job, options=options, host=ram, ranks=2, cfg=1.0)
    assert (one.cfg_degree, one.sequence_degree, one.reason) == (1, 1, "no CUDA GPU visible: running on the CPU in float32")
    assert (cfg.kind, cfg.cfg_degree, cfg.sequence_degree) == ("cpu", 2, 1)
    assert cfg.reason == ("no CUDA GPU visible: 2 processes on the CPU in float32, each runs one of a step's two "
                          "guidance passes (cfg-parallel)")
    assert (seq.cfg_degree, seq.sequence_degree) == (1, 2) and "1/2 of every pass's tokens" in seq.reason
    assert cfg.memory.devices[0].budget == ram.budget // 2 and one.memory.devices[0].budget == ram.budget
    assert plan_job(seq, job).sequence_degree == 2


def test_a_parallel_placement_is_applied_by_a_rank_of_a_process_group():
    simulated = choose((80, 80), P480)
    placement = Placement(simulated.kind, simulated.gpus, simulated.reason, simulated.memory)  # as if detected
    parts = (torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    with pytest.raises(PusaInputError, match="'cfg-parallel' runs one process per GPU and this process is not one of "
                                             "them; start them with torchrun --nproc-per-node 2"):
        apply_placement(placement, *parts)
    with pytest.raises(PusaInputError, match="rank 2 has no GPU in this 2-GPU cfg-parallel placement"):
        apply_placement(placement, *parts, rank=2)


def test_cli_prints_the_plan_and_its_predicted_step(capsys):
    assert plan_cli.main(["--gpus", "80,80", "--size", "832x480", "--frames", "81"]) == 0
    out = capsys.readouterr().out
    assert "Placement: cfg-parallel - 2 GPUs" in out and "Ranks: cfg degree 2 x sequence degree 1" in out
    assert "cuda:1   simulated 80 GB               26.7    4.6        -     -" in out
    assert "Predicted step: 0.50x one GPU's (4.5 s against 9.1 s)" in out
    assert ("  model: 2 passes a step (cfg 5) of 1.80 PFLOP each; H100 SXM class at 40% of 989 TFLOP/s bf16; "
            "PCIe 4 x16 at 25 GB/s and 25 us a collective") in out
    assert "  cfg all-gather of the velocity: 1 a step, 4.2 MB" in out
    assert plan_cli.main(["--gpus", "80,80", "--size", "832x480", "--cfg", "1", "--link", "nvlink"]) == 0
    out = capsys.readouterr().out
    assert "Placement: sequence-parallel" in out and "Predicted step: 0.51x one GPU's" in out
    assert "  Ulysses all-to-alls (q, k, v, out): 160 a step, 13.4 GB" in out
    with pytest.raises(SystemExit) as exit_:
        plan_cli.main(["--gpus", "80,80", "--cfg", "0.5"])
    assert exit_.value.code == 2 and "--cfg must be a number from 1 to 20, got 0.5" in capsys.readouterr().err


def test_readme_two_gpu_table_is_the_clis(capsys):
    assert plan_cli.main(["--table", "parallel"]) == 0
    table = capsys.readouterr().out.strip()
    section = (ROOT / "README.md").read_text().split("## Two or more GPUs", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert "\n".join(rows) == table
    assert len(rows) == 2 + 12
