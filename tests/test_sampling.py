"""The sampler: schedule math, golden parity for every case, conditioning semantics, cancel, determinism."""

from __future__ import annotations

import threading

import pytest
import torch

from pusa_core.errors import GenerationCancelled, JobTimedOut
from pusa_core.loading import transformer_from_original_state_dict
from pusa_core.lora import load_lora, set_lora_alpha
from pusa_core.sampling import Deadline, initial_latents, sample
from pusa_core.schedule import frame_multipliers, frame_sigmas, frame_timesteps, shifted_sigmas
from pusa_core.tiny_models import tiny_transformer


def test_shifted_sigmas_formula():
    s = torch.tensor([1.0, 0.75, 0.5, 0.25])
    expected = torch.cat([5 * s / (1 + 4 * s), torch.zeros(1)])
    assert torch.allclose(shifted_sigmas(4), expected)
    assert shifted_sigmas(10).shape == (11,) and shifted_sigmas(10)[0] == 1.0 and shifted_sigmas(10)[-1] == 0.0


def test_frame_sigmas_and_timesteps_scale_by_multiplier():
    m = frame_multipliers(5, {0: 0.2, 4: 0.0})
    assert torch.allclose(m, torch.tensor([0.2, 1.0, 1.0, 1.0, 0.0]))
    sig = frame_sigmas(shifted_sigmas(4), m)
    assert sig.shape == (5, 5)
    assert torch.allclose(frame_timesteps(sig)[0], torch.tensor([200.0, 1000.0, 1000.0, 1000.0, 0.0]))


def test_conditioning_frames_start_noised_by_their_multiplier():
    noise = torch.randn(1, 16, 3, 2, 2)
    clean = torch.randn(1, 16, 1, 2, 2)
    lat = initial_latents(noise, {1: clean}, torch.tensor([1.0, 0.3, 1.0]))
    assert torch.allclose(lat[:, :, 1:2], 0.7 * clean + 0.3 * noise[:, :, 1:2])
    assert torch.equal(lat[:, :, 0], noise[:, :, 0])
    assert torch.equal(initial_latents(noise, {1: clean}, torch.tensor([1.0, 0.0, 1.0]))[:, :, 1:2], clean)


@pytest.mark.parametrize("case_index", [0, 1, 2])
def test_every_golden_case_matches_reference(pusa_golden, golden_config, case_index):
    meta, t = pusa_golden
    if case_index >= len(meta["cases"]):
        pytest.skip("golden file has fewer cases")
    case = meta["cases"][case_index]
    model = transformer_from_original_state_dict({k[4:]: v for k, v in t.items() if k.startswith("dit.")}, golden_config, torch.float32)
    load_lora(model, {k[5:]: v for k, v in t.items() if k.startswith("lora.")}, alpha=case["alpha"])
    name = case["name"]
    cond = {int(k): v for k, v in case["cond"].items()}
    noise = t[f"case.{name}.noise"]
    result = sample(
        model, noise, {i: t[f"case.{name}.cond_latent.{i}"] for i in cond}, frame_multipliers(noise.shape[2], cond),
        t["context.positive"], t["context.negative"], case["steps"], case["cfg"],
    )
    assert (result.latents - t[f"case.{name}.final_latents"]).abs().max() < 1e-4
    assert len(result.step_seconds) == case["steps"]


@pytest.fixture(scope="module")
def model():
    return tiny_transformer(seed=1)


def _run(model, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 16, 3, 4, 4, generator=g)
    clean = torch.randn(1, 16, 1, 4, 4, generator=g)
    pos, neg = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    args = dict(cond_latents={0: clean}, multipliers=torch.tensor([0.0, 1.0, 1.0]), steps=3, cfg=4.0) | kw
    return sample(model, noise, positive=pos, negative=neg, **args), clean


def test_zero_multiplier_frames_never_move(model):
    result, clean = _run(model)
    assert torch.equal(result.latents[:, :, 0:1], clean)


def test_same_seed_same_output_and_different_seed_differs(model):
    a, _ = _run(model, seed=7)
    b, _ = _run(model, seed=7)
    c, _ = _run(model, seed=8)
    assert torch.equal(a.latents, b.latents)
    assert not torch.allclose(a.latents, c.latents)


def _passes(model, on_pass=lambda n: None, **kw):
    """Run the sampler and count transformer passes; ``on_pass(n)`` runs after pass n."""
    calls = []

    def hook(*args):
        calls.append(1)
        on_pass(len(calls))

    handle = model.register_forward_hook(hook)
    try:
        result, clean = _run(model, **kw)
    finally:
        handle.remove()
    return result, clean, len(calls)


def test_cfg_one_skips_the_negative_pass(model):
    assert _passes(model, cfg=1.0)[2] == 3


def test_all_zero_multipliers_run_no_pass_and_return_the_clean_latents(model):
    g = torch.Generator().manual_seed(3)
    clean = {i: torch.randn(1, 16, 1, 4, 4, generator=g) for i in range(3)}
    result, _, passes = _passes(model, cond_latents=clean, multipliers=torch.zeros(3))
    assert passes == 0 and result.step_seconds == ()
    assert torch.equal(result.latents, torch.cat([clean[i] for i in range(3)], dim=2))


def test_cancel_during_a_step_skips_its_second_pass(model):
    cancel = threading.Event()
    with pytest.raises(GenerationCancelled, match="^cancelled during step 1 of 3$"):
        _passes(model, on_pass=lambda n: cancel.set(), cancel=cancel)


class PassClock:
    """A clock that advances one second per transformer pass, so deadlines need no real timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, n: int) -> None:
        self.now = float(n)


def test_deadline_stops_at_a_step_boundary_and_between_passes(model):
    clock = PassClock()
    message = ("this job ran past the 2 s limit set by --max-job-seconds and was stopped after step 2 of 5; "
               "nothing was saved; lower the size, frames or steps")
    with pytest.raises(JobTimedOut) as err:
        _passes(model, on_pass=clock.tick, cfg=1.0, steps=5, deadline=Deadline.starting_now(2, clock))
    assert str(err.value) == message
    clock = PassClock()
    with pytest.raises(JobTimedOut, match="limit set by --max-job-seconds and was stopped after step 0 of 5;"):
        _passes(model, on_pass=clock.tick, cfg=4.0, steps=5, deadline=Deadline.starting_now(1, clock))
    assert clock.now == 1.0  # the negative pass of step 1 never ran
    clock = PassClock()
    result, _, passes = _passes(model, on_pass=clock.tick, steps=3, deadline=Deadline.starting_now(7, clock))
    assert passes == 6 and len(result.step_seconds) == 3


def test_callback_reports_each_step_and_cancel_stops(model):
    seen = []
    cancel = threading.Event()

    def on_step(report):
        seen.append((report.step, report.total))
        if report.step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled, match="before step 3 of 5"):
        _run(model, steps=5, callback=on_step, cancel=cancel)
    assert seen == [(1, 5), (2, 5)]


def test_multiplier_count_must_match_frames(model):
    with pytest.raises(ValueError, match="one entry per latent frame"):
        _run(model, multipliers=torch.ones(2))


def test_alpha_changes_are_exact_not_cumulative(pusa_golden, golden_config):
    t = pusa_golden[1]
    model = transformer_from_original_state_dict({k[4:]: v for k, v in t.items() if k.startswith("dit.")}, golden_config, torch.float32)
    load_lora(model, {k[5:]: v for k, v in t.items() if k.startswith("lora.")}, alpha=1.4)
    x, ts, ctx = t["forward.x"], t["forward.timestep"], t["context.positive"]
    with torch.no_grad():
        set_lora_alpha(model, 1.2)
        set_lora_alpha(model, 1.4)
        again = model(x, ts, ctx).sample
    assert (again - t["forward.out_lora_1.4"]).abs().max() < 1e-4
