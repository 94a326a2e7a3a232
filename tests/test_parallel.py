"""cfg-parallel and sequence-parallel sampling on gloo: the final latents of one process, and stops that reach every rank.

Each world (2, 3 or 4 processes) starts once per module and runs its jobs in order; the tests read
what every rank returned. The reference is the single-process sampler, in this process. Ranks are
forked from this process, so they start without importing torch and diffusers again (spawning
them costs about 10 s of imports per rank on two cores); each uses one thread, as a forked
DataLoader worker does.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from pusa_core.parallel import init_group, parallel_guidance
from pusa_core.sampling import sample
from pusa_core.schedule import frame_multipliers
from pusa_core.tiny_models import tiny_transformer
from pusa_core.transformer import TokenSpan, _modulate
from tests.support.processes import free_port, run_ranks

TOL = 1e-5
STEPS = 3
WORLD_SECONDS = 120  # a world still running after this has hung: fail instead of waiting forever


@dataclass(frozen=True)
class Job:
    """One sampler call on random inputs; ``latent`` is the latents' (frames, height, width)."""

    name: str
    latent: tuple[int, int, int]
    cond: dict[int, float] = field(default_factory=dict)  # conditioned slot -> noise multiplier
    cfg: float = 4.0
    seed: int = 0

    def but(self, name: str, **changes: Any) -> Job:
        return Job(name, **{"latent": self.latent, "cond": self.cond, "cfg": self.cfg, "seed": self.seed, **changes})

    def inputs(self) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed)
        frames, height, width = self.latent
        noise = torch.randn(1, 16, frames, height, width, generator=g)
        clean = {i: torch.randn(1, 16, 1, height, width, generator=g) for i in self.cond}
        positive, negative = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)
        return dict(noise=noise, cond_latents=clean, multipliers=frame_multipliers(frames, self.cond),
                    positive=positive, negative=negative, steps=STEPS, cfg=self.cfg)


# Latent 6x8 is 3x4 = 12 tokens a frame: 5 frames split 30/30 over 2 ranks (2.5 frames each) and
# 20/20/20 over 3 (1.67 frames each); 7 frames split 42/42 and 28/28/28. Latent 6x6 is 9 tokens a
# frame: 45 tokens, padded to 46 for 2 ranks. Latent 4x4 is 4: 20 tokens, padded to 21 for 3.
CASES = [
    Job("i2v", (5, 6, 8), {0: 0.0}),  # the image's slot at multiplier 0 never moves
    Job("keyframes", (5, 6, 8), {0: 0.2, 4: 0.5}, seed=1),  # first and last slot
    Job("extension", (7, 6, 8), {0: 0.0, 1: 0.0, 2: 0.3, 3: 0.3}, seed=2),  # slots 0..3 from a video
    Job("t2v", (5, 6, 8), seed=3),
    Job("t2v_padded", (5, 6, 6), seed=4),
    Job("i2v_padded", (5, 4, 4), {0: 0.0}, seed=5),
]
CASES_CFG1 = [job.but(f"{job.name}_cfg1", cfg=1.0) for job in CASES]
CASES_2X2 = [CASES[1], CASES[4]]  # keyframes, and a padded sequence
GOOD = CASES[0]


def tiny_model(heads: int) -> torch.nn.Module:
    """2 heads of 16 (the usual tiny model), or 5 heads of 8: 3 ranks share those with one padding head."""
    if heads == 2:
        return tiny_transformer(seed=1)
    return tiny_transformer(seed=1, num_attention_heads=heads, attention_head_dim=8)


class FailOnCall:
    """A forward pre-hook that raises on the model's ``at``-th call."""

    def __init__(self, at: int) -> None:
        self.calls, self.at = 0, at

    def __call__(self, *args: Any) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("injected failure")


def cancel_after_step_2(rank: int) -> dict[str, Any]:
    """Only rank 0 (the one serving the page) has the cancel event; its callback sets it after step 2."""
    if rank != 0:
        return {}
    cancel = threading.Event()
    return dict(cancel=cancel, callback=lambda report: cancel.set() if report.step == 2 else None)


def fail_in_rank_1_last_callback(rank: int) -> dict[str, Any]:
    def callback(report: Any) -> None:
        if rank == 1 and report.step == STEPS:
            raise RuntimeError("injected failure")

    return dict(callback=callback)


def run_jobs(model: torch.nn.Module, guidance: Any, jobs: list[Job], prefix: str,
             outcomes: dict[str, Any], **kw: Any) -> None:
    """Record each job's final latents, or its exception's type name and message."""
    for job in jobs:
        try:
            outcomes[prefix + job.name] = sample(model, **job.inputs(), guidance=guidance, **kw).latents
        except Exception as error:
            outcomes[prefix + job.name] = (type(error).__name__, str(error))


def cfg_parallel_world(rank: int, outcomes: dict[str, Any]) -> None:
    model = tiny_model(2)
    guidance = parallel_guidance(model, cfg_degree=2, sequence_degree=1)
    run = functools.partial(run_jobs, model, guidance, prefix="cfg/", outcomes=outcomes)
    run(CASES + [GOOD.but("refused", cfg=1.0)])
    run([GOOD.but("cancelled")], **cancel_after_step_2(rank))
    run([GOOD.but("after_cancel")])
    hook = model.register_forward_pre_hook(FailOnCall(at=2)) if rank == 1 else None
    run([GOOD.but("failed")])
    if hook is not None:
        hook.remove()
    run([GOOD.but("after_failure")])


def sequence_parallel_world(rank: int, outcomes: dict[str, Any]) -> None:
    model = tiny_model(2)
    guidance = parallel_guidance(model, cfg_degree=1, sequence_degree=2)
    run = functools.partial(run_jobs, model, guidance, prefix="seq/", outcomes=outcomes)
    good = GOOD.but("", cfg=1.0)
    run(CASES + CASES_CFG1)
    run([good.but("cancelled")], **cancel_after_step_2(rank))
    run([good.but("after_cancel")])
    run([good.but("failed")], **fail_in_rank_1_last_callback(rank))
    run([good.but("after_failure")])
    # Last in the world, which it breaks: rank 1 raises inside a pass that rank 0 is already in.
    if rank == 1:
        model.register_forward_pre_hook(FailOnCall(at=1))
    run([good.but("out_of_step")])


def two_rank_world(rank: int, outcomes: dict[str, Any]) -> None:
    cfg_parallel_world(rank, outcomes)
    sequence_parallel_world(rank, outcomes)


def three_rank_world(rank: int, outcomes: dict[str, Any]) -> None:
    try:
        parallel_guidance(tiny_model(2), cfg_degree=1, sequence_degree=3)
    except ValueError as error:
        outcomes["two_heads"] = str(error)
    model = tiny_model(5)
    run_jobs(model, parallel_guidance(model, cfg_degree=1, sequence_degree=3), CASES_CFG1, "seq3/", outcomes)


def four_rank_world(rank: int, outcomes: dict[str, Any]) -> None:
    model = tiny_model(2)
    run_jobs(model, parallel_guidance(model, cfg_degree=2, sequence_degree=2), CASES_2X2, "2x2/", outcomes)


WORLDS: dict[str, Callable[[int, dict[str, Any]], None]] = {
    "two": two_rank_world, "three": three_rank_world, "four": four_rank_world,
}


def _rank_main(rank: int, world: str, size: int, port: int, out_dir: Path) -> None:
    torch.set_num_threads(1)
    init_group(f"tcp://127.0.0.1:{port}", rank=rank, world_size=size, timeout=timedelta(seconds=WORLD_SECONDS / 2))
    outcomes: dict[str, Any] = {}
    WORLDS[world](rank, outcomes)
    torch.save(outcomes, out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


def spawn_world(world: str, size: int, out_dir: Path) -> list[dict[str, Any]]:
    run_ranks(_rank_main, (world, size, free_port(), out_dir), size, WORLD_SECONDS, f"the {size}-rank world '{world}'")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(size)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict[str, Any]]:
    return spawn_world("two", 2, tmp_path_factory.mktemp("two"))


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory) -> list[dict[str, Any]]:
    return spawn_world("three", 3, tmp_path_factory.mktemp("three"))


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> list[dict[str, Any]]:
    return spawn_world("four", 4, tmp_path_factory.mktemp("four"))


_references: dict[tuple[str, int], torch.Tensor] = {}


def reference(job: Job, heads: int = 2) -> torch.Tensor:
    key = (job.name, heads)
    if key not in _references:
        _references[key] = sample(tiny_model(heads), **job.inputs()).latents
    return _references[key]


def assert_every_rank_matches(ranks: list[dict[str, Any]], name: str, expected: torch.Tensor) -> None:
    first = ranks[0][name]
    assert isinstance(first, torch.Tensor), f"{name} on rank 0: {first}"
    for r, outcomes in enumerate(ranks):
        assert torch.equal(outcomes[name], first), f"rank {r} ended {name} with other latents than rank 0"
    assert (first - expected).abs().max() <= TOL


@pytest.mark.parametrize("job", CASES, ids=lambda job: job.name)
def test_cfg_parallel_equals_one_process(two_ranks, job):
    assert_every_rank_matches(two_ranks, "cfg/" + job.name, reference(job))


@pytest.mark.parametrize("job", CASES + CASES_CFG1, ids=lambda job: job.name)
def test_sequence_parallel_equals_one_process(two_ranks, job):
    assert_every_rank_matches(two_ranks, "seq/" + job.name, reference(job))


@pytest.mark.parametrize("job", CASES_CFG1, ids=lambda job: job.name)
def test_three_sequence_ranks_with_uneven_slices_and_heads_equal_one_process(three_ranks, job):
    assert_every_rank_matches(three_ranks, "seq3/" + job.name, reference(job, heads=5))


@pytest.mark.parametrize("job", CASES_2X2, ids=lambda job: job.name)
def test_two_cfg_groups_of_two_sequence_ranks_equal_one_process(four_ranks, job):
    assert_every_rank_matches(four_ranks, "2x2/" + job.name, reference(job))


def test_cfg_parallel_refuses_cfg_1_on_every_rank(two_ranks):
    message = ("cfg: cfg-parallel runs the unconditional pass on a second GPU, and at cfg 1 there is none; "
               "raise cfg above 1, or use the sequence-parallel placement, which is the one for cfg 1")
    assert [r["cfg/refused"] for r in two_ranks] == [("PusaInputError", message)] * 2


def test_sequence_ranks_must_be_able_to_share_the_heads(three_ranks):
    message = "3 sequence ranks cannot share 2 attention heads; use fewer ranks, or a number that divides 2"
    assert [r["two_heads"] for r in three_ranks] == [message] * 3


@pytest.mark.parametrize("placement", ["cfg", "seq"])
def test_cancel_on_rank_0_stops_every_rank_before_the_next_step(two_ranks, placement):
    assert [r[f"{placement}/cancelled"] for r in two_ranks] == [("GenerationCancelled", "cancelled before step 3 of 3")] * 2
    expected = reference(GOOD if placement == "cfg" else GOOD.but("i2v_cfg1", cfg=1.0))
    assert_every_rank_matches(two_ranks, f"{placement}/after_cancel", expected)


@pytest.mark.parametrize("placement", ["cfg", "seq"])
def test_failure_on_rank_1_stops_every_rank_and_the_next_job_runs(two_ranks, placement):
    """cfg: rank 1's second pass raises; seq: rank 1's callback raises after the last step."""
    rank0, rank1 = (r[f"{placement}/failed"] for r in two_ranks)
    assert rank1 == ("RuntimeError", "injected failure")
    assert rank0 == ("RankFailed", "rank 1 of 2 failed, so every rank stopped this job: RuntimeError: injected failure")
    expected = reference(GOOD if placement == "cfg" else GOOD.but("i2v_cfg1", cfg=1.0))
    assert_every_rank_matches(two_ranks, f"{placement}/after_failure", expected)


def test_a_failure_inside_a_sequence_parallel_pass_stops_every_rank_out_of_step(two_ranks):
    """Rank 0 is in the pass's collectives when rank 1 raises; its collective fails as rank 1's connections close."""
    rank0, rank1 = (r["seq/out_of_step"] for r in two_ranks)
    assert rank1 == ("RanksOutOfStep", "a sequence-parallel pass failed on rank 1, inside collectives the other "
                     "ranks share, so the ranks are out of step; restart all ranks: RuntimeError: injected failure")
    assert rank0[0] == "RanksOutOfStep" and rank0[1].startswith("a sequence-parallel pass failed on rank 0, ")


@pytest.mark.parametrize("start,length", [(0, 60), (30, 30), (20, 20), (7, 50), (55, 8)])
def test_a_slice_is_modulated_as_its_tokens_are_in_the_whole_sequence(start, length):
    """5 frames of 12 tokens; a slice may start and end inside a frame or run into padding past the end."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 63, 8, generator=g)
    scale, shift = torch.randn(2, 5, 1, 8, generator=g), torch.randn(2, 5, 1, 8, generator=g)
    whole = _modulate(x[:, :60], scale, shift, TokenSpan.whole(5, 12))
    part = _modulate(x[:, start:start + length], scale, shift, TokenSpan(start, length, 12, 5))
    real = min(length, 60 - start)
    assert torch.equal(part[:, :real], whole[:, start:start + real])
    assert part.shape == (2, length, 8)
