"""The step-time model of the placements, checked against hand computation (no torch, no GPU)."""

from __future__ import annotations

import pytest

from pusa_core.placement.speed import GPU_CLASSES, LINKS, Layout, gpu_class, step_time

H100 = GPU_CLASSES[2]
PCIE, NVLINK = LINKS["pcie4"], LINKS["nvlink"]
TOKENS_480P = 21 * 30 * 52  # 832x480x81
FLOPS_480P = 2 * 14e9 * TOKENS_480P + 4 * TOKENS_480P**2 * 5120 * 40
H100_ACHIEVED = 0.4 * 989e12


def test_one_gpu_is_the_passes_flops_at_the_achieved_throughput():
    step = step_time(Layout("single"), 832, 480, 81, 5.0, H100, PCIE)
    assert step.one_gpu_s == pytest.approx(2 * FLOPS_480P / H100_ACHIEVED, rel=1e-12)
    assert step.ratio == 1.0 and step.collectives == ()
    assert step_time(Layout("single"), 832, 480, 81, 1.0, H100, PCIE).one_gpu_s == pytest.approx(step.one_gpu_s / 2)


def test_cfg_parallel_is_one_pass_plus_one_all_gather_of_the_velocity():
    step = step_time(Layout("cfg-parallel", cfg_degree=2), 832, 480, 81, 5.0, H100, PCIE)
    velocity = (16 * 21 * 60 * 104 + 1) * 2  # [1, 16, F, H/8, W/8] bf16 and the stop code
    (gather,) = step.collectives
    assert (gather.count, gather.bytes) == (1, velocity) and step.link_bytes == 4_193_282
    comm = velocity / 25e9 + 25e-6
    assert step.comm_s == pytest.approx(comm, rel=1e-12)
    assert step.ratio == pytest.approx(0.5 + comm / step.one_gpu_s, rel=1e-12)
    assert 0.5 < step.ratio < 0.5001


def test_sequence_parallel_is_half_the_flops_plus_ulysses_all_to_alls():
    step = step_time(Layout("sequence-parallel", sequence_degree=2), 832, 480, 81, 1.0, H100, PCIE)
    local = TOKENS_480P // 2  # 16,380: even, so no padding and no mask gather
    all_to_all = 40 * 4 * local * 5120 * 2 // 2  # a rank sends the half of each [local, 5120] bf16 it does not keep
    output = local * 64 * 2
    stop_code = 8  # the int64 every rank agrees on before the pass
    assert [(c.count, c.bytes) for c in step.collectives] == [(160, all_to_all), (1, output), (1, stop_code)]
    assert step.link_bytes == 13_420_592_648
    comm = (all_to_all + output + stop_code) / 25e9 + 162 * 25e-6
    assert step.compute_s == pytest.approx(FLOPS_480P / 2 / H100_ACHIEVED, rel=1e-12)
    assert step.ratio == pytest.approx(0.5 + comm / step.one_gpu_s, rel=1e-12)
    nvlink = step_time(Layout("sequence-parallel", sequence_degree=2), 832, 480, 81, 1.0, H100, NVLINK)
    assert nvlink.ratio == pytest.approx(0.5 + ((all_to_all + output + stop_code) / 300e9 + 162 * 10e-6) / step.one_gpu_s)


def test_uneven_tokens_are_padded_and_their_mask_is_gathered():
    tokens = 3 * 30 * 53  # 848x480x9: 4,770 tokens
    even = step_time(Layout("sequence-parallel", sequence_degree=3), 848, 480, 9, 5.0, H100, PCIE)
    assert [c.name for c in even.collectives] == ["Ulysses all-to-alls (q, k, v, out)", "output all-gather",
                                                  "stop-code all-reduce"]
    padded = step_time(Layout("sequence-parallel", sequence_degree=4), 848, 480, 9, 5.0, H100, PCIE)
    local = 1193  # 4,770 padded to 4,772
    mask = next(c for c in padded.collectives if c.name == "padding mask all-gather")
    # A bool a token, sent to the 3 other ranks, in every block of both passes.
    assert (mask.count, mask.bytes) == (2 * 40, 2 * 40 * local * 3)
    flops = 2 * 14e9 * 4 * local + 4 * (4 * local) ** 2 * 5120 * 40
    assert padded.compute_s == pytest.approx(2 * flops / 4 / H100_ACHIEVED, rel=1e-12)
    assert tokens % 4 and not tokens % 3


def test_two_cfg_groups_of_two_sequence_ranks():
    step = step_time(Layout("cfg-parallel", cfg_degree=2, sequence_degree=2), 832, 480, 81, 5.0, H100, PCIE)
    assert step.compute_s == pytest.approx(FLOPS_480P / 2 / H100_ACHIEVED, rel=1e-12)  # one pass, half its tokens
    # One pass's Ulysses traffic, its output gather, the stop code before it and after the exchange, the exchange.
    assert [c.count for c in step.collectives] == [160, 1, 2, 1]
    assert 0.25 < step.ratio < 0.32


def test_shard_runs_every_pass_on_one_gpu_at_a_time_plus_its_hops():
    step = step_time(Layout("shard", shard_blocks=(19, 21)), 832, 480, 81, 5.0, H100, PCIE)
    hidden = TOKENS_480P * 5120 * 2
    inputs = 2 * TOKENS_480P * 128 * 4 + 512 * 5120 * 2 + 21 * 6 * 5120 * 4  # rotary, text, modulation
    assert [(c.count, c.bytes) for c in step.collectives] == [(2, 2 * hidden), (42, 42 * inputs)]
    assert step.compute_s == step.one_gpu_s
    assert step.ratio == pytest.approx(1 + ((2 * hidden + 42 * inputs) / 25e9 + 44 * 25e-6) / step.one_gpu_s)
    assert 1.0 < step.ratio < 1.02


def test_offload_takes_the_longer_of_the_pass_and_the_weights_crossing_pcie():
    weights = 31 * 10**9
    small = gpu_class(24)
    slow = step_time(Layout("offload", streamed_bytes=weights), 832, 480, 81, 5.0, small, PCIE)
    assert slow.ratio == 1.0 and slow.link_bytes == 2 * weights  # compute-bound at 480p on this class
    tiny = step_time(Layout("offload", streamed_bytes=weights), 256, 256, 1, 1.0, H100, PCIE)
    assert tiny.compute_s == pytest.approx(weights / 25e9) and tiny.ratio > 10


def test_fp8_storage_adds_the_upcast_traffic():
    bf16 = step_time(Layout("cfg-parallel", cfg_degree=2), 832, 480, 81, 5.0, H100, PCIE)
    fp8 = step_time(Layout("cfg-parallel", cfg_degree=2, fp8=True), 832, 480, 81, 5.0, H100, PCIE)
    assert fp8.compute_s - bf16.compute_s == pytest.approx(3 * 14e9 / 3350e9, rel=1e-12)


@pytest.mark.parametrize("memory,name", [(24, "RTX 4090"), (47.99, "L40S"), (48, "L40S"), (80, "H100 SXM"),
                                         (141, "H100 SXM"), (16, "RTX 4090")])
def test_gpu_class_by_memory(memory, name):
    assert gpu_class(memory).name == name
