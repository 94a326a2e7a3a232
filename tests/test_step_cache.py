"""Step caching with diffusers' hooks on the per-frame transformer: passes skipped, outputs, refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pusa_core import facts
from pusa_core.cache_choice import (StepCache, check_step_cache, full_passes, lost_checks, measured_rows,
                                   offered_step_caches, parse_step_cache)
from pusa_core.conditioning import validate_settings
from pusa_core.errors import PusaInputError
from pusa_core.job import step_cache_for
from pusa_core.placement import choose_placement, simulated_gpus
from pusa_core.requests import Settings, TextToVideo, preset_settings
from pusa_core.sampling import sample
from pusa_core.step_cache import step_caching
from pusa_core.transformer import PusaTransformer3DModel

TINY = Path(__file__).resolve().parents[1] / "weights" / "pusa-tiny" / "transformer"
STEPS = 10


@pytest.fixture(scope="module")
def transformer() -> PusaTransformer3DModel:
    """The shipped small model's transformer (its blocks' residuals change like a trained model's)."""
    return PusaTransformer3DModel.from_pretrained(TINY).eval()


def run(transformer: PusaTransformer3DModel, cache: StepCache | None, cfg: float = 3.0):
    """An I2V-like job: frame 0 conditioned at multiplier 0.2, so the frames' timesteps differ."""
    g = torch.Generator().manual_seed(0)
    noise, positive, negative = torch.randn(1, 16, 5, 8, 8, generator=g), torch.randn(1, 16, 64, generator=g), torch.randn(1, 16, 64, generator=g)
    multipliers = torch.tensor([0.2, 1.0, 1.0, 1.0, 1.0])
    cond = {0: torch.randn(1, 16, 1, 8, 8, generator=g)}
    with step_caching(transformer, cache, STEPS) as count:
        result = sample(transformer, noise, cond, multipliers, positive, negative, STEPS, cfg)
    return result.latents, count


def test_off_counts_every_pass_as_full_and_leaves_no_hooks(transformer):
    off, count = run(transformer, None)
    assert (count.passes, count.full, count.skipped) == (2 * STEPS, 2 * STEPS, 0)
    _, one_pass = run(transformer, None, cfg=1.0)
    assert (one_pass.passes, one_pass.skipped) == (STEPS, 0)
    cached, _ = run(transformer, StepCache(facts.FIRST_BLOCK, 0.1))
    assert not transformer.is_cache_enabled  # the job's cache is gone after it
    again, _ = run(transformer, None)
    assert torch.equal(again, off) and not torch.equal(cached, off)


def test_first_block_skips_more_as_the_threshold_rises_and_stays_close_at_a_small_one(transformer):
    off, _ = run(transformer, None)
    exact, none_skipped = run(transformer, StepCache(facts.FIRST_BLOCK, 0.02))
    assert none_skipped.skipped == 0 and torch.equal(exact, off)  # the hooks alone change nothing
    close, few = run(transformer, StepCache(facts.FIRST_BLOCK, 0.1))
    far, many = run(transformer, StepCache(facts.FIRST_BLOCK, 0.2))
    assert 1 <= few.skipped < many.skipped < 2 * STEPS
    relative = lambda x: float((x - off).abs().mean() / off.abs().mean())  # noqa: E731
    assert relative(close) < 0.05 < relative(far)


def test_taylorseer_predicts_the_steps_between_full_ones(transformer):
    off, _ = run(transformer, None)
    # Warm-up steps 0-2 and the last step run in full; interval 2 predicts steps 3, 5, 7 of both branches.
    two, count2 = run(transformer, StepCache(facts.TAYLORSEER, 2))
    assert (count2.passes, count2.skipped) == (2 * STEPS, 6)
    three, count3 = run(transformer, StepCache(facts.TAYLORSEER, 3))  # steps 3, 5, 6, 8
    assert count3.skipped == 8
    relative = lambda x: float((x - off).abs().mean() / off.abs().mean())  # noqa: E731
    assert 0 < relative(two) < relative(three) < 0.1


@pytest.mark.parametrize(("value", "message"), [
    (0.05, "step_cache: must be text, got 0.05; write off or KIND:THRESHOLD with KIND one of first-block, taylorseer"),
    ("magcache:0.1", "step_cache: 'magcache:0.1' is not a step-cache setting; write off or KIND:THRESHOLD"),
    ("first-block", "step_cache: 'first-block' is not a step-cache setting"),
    ("first-block:lots", "step_cache: 'first-block:lots' has no number after the colon"),
    ("first-block:2", "step_cache: first-block's threshold must be a number from 0.01 to 1, got 2.0"),
    ("taylorseer:2.5", "step_cache: taylorseer's threshold must be a whole number from 2 to 5, got 2.5"),
])
def test_bad_settings_are_refused_with_the_field_and_the_fix(value, message):
    with pytest.raises(PusaInputError) as err:
        parse_step_cache(value)
    assert str(err.value).startswith(message)


def test_parsing_reads_what_the_dropdown_writes():
    assert parse_step_cache(" OFF ") is None
    assert parse_step_cache("first-block:0.05") == StepCache(facts.FIRST_BLOCK, 0.05)
    assert parse_step_cache("taylorseer:2").text == "taylorseer:2"


def test_only_measured_settings_that_lose_no_check_are_offered():
    rows = measured_rows()
    assert rows, "benchmarks/step_cache.py --write has not stored its measurements"
    off = next(r for r in rows if r["setting"] == facts.STEP_CACHE_OFF)
    offered = offered_step_caches()
    assert offered[0] == facts.STEP_CACHE_OFF
    for row in rows:
        kept = all(mine["passed"] or not base["passed"] for mine, base in zip(row["checks"], off["checks"]))
        assert (row["setting"] in offered) == kept
        if kept:
            check_step_cache(row["setting"], STEPS, facts.QUALITY)
        else:
            with pytest.raises(PusaInputError, match=f"fails {len(lost_checks(row, rows))} quality check"):
                check_step_cache(row["setting"], STEPS, facts.QUALITY)
    with pytest.raises(PusaInputError, match=r"'first-block:0.07' was not measured on the small model .*; use one of off"):
        check_step_cache("first-block:0.07", STEPS, facts.QUALITY)


def test_combinations_that_cannot_work_are_refused_with_why():
    quality = Settings(prompt="a ball", steps=STEPS, step_cache="first-block:0.05")
    with pytest.raises(PusaInputError, match="step_cache: cannot be used with the Fast preset: its 4 distilled steps"):
        validate_settings(replace(quality, preset=facts.FAST, steps=4, cfg=1.0))
    with pytest.raises(PusaInputError, match="step_cache: needs at least 10 steps .* got 6; raise steps or set step_cache to off"):
        validate_settings(replace(quality, steps=6))
    assert preset_settings(quality, facts.FAST).step_cache == facts.STEP_CACHE_OFF  # choosing Fast turns it off
    sequence = choose_placement(simulated_gpus([80, 80]), requested="sequence-parallel", simulated=True, cfg=1.0, ranks=2)
    with pytest.raises(PusaInputError, match="first-block cannot run under the sequence-parallel placement: each rank decides"):
        step_cache_for(sequence, quality)
    with pytest.raises(PusaInputError, match="taylorseer cannot run under the sequence-parallel placement"):
        step_cache_for(sequence, replace(quality, step_cache="taylorseer:2"))
    assert step_cache_for(sequence, replace(quality, step_cache="off")) is None
    cfg_parallel = choose_placement(simulated_gpus([80, 80]), requested="cfg-parallel", simulated=True, cfg=5.0, ranks=2)
    with pytest.raises(PusaInputError, match="first-block cannot run under the cfg-parallel placement: the ranks run"):
        step_cache_for(cfg_parallel, quality)
    single = choose_placement(simulated_gpus([80]), requested="single", simulated=True)
    assert step_cache_for(single, quality) == StepCache(facts.FIRST_BLOCK, 0.05)


@pytest.mark.parametrize("cache", [None, StepCache(facts.FIRST_BLOCK, 0.2), StepCache(facts.TAYLORSEER, 2),
                                   StepCache(facts.TAYLORSEER, 3)])
def test_full_passes_counts_only_what_is_certain(transformer, cache):
    _, count = run(transformer, cache)
    if cache is None or cache.kind == facts.TAYLORSEER:  # a fixed schedule: exactly what ran
        assert full_passes(STEPS, 3.0, cache) == count.full
    else:  # first-block decides as it goes: every pass may run
        assert full_passes(STEPS, 3.0, cache) == 2 * STEPS > count.full
    assert full_passes(STEPS, 1.0, cache) == full_passes(STEPS, 3.0, cache) // 2


def test_a_setting_is_judged_against_caching_off_not_against_the_bounds():
    def row(setting, *passed):
        return {"setting": setting, "checks": [{"claim": f"c{i}", "passed": p} for i, p in enumerate(passed)]}

    rows = (row("off", True, False, True), row("first-block:0.1", True, False, True), row("taylorseer:2", False, True, True))
    assert lost_checks(rows[1], rows) == []  # fails only what off fails too
    assert lost_checks(rows[2], rows) == ["c0"]  # gaining c1 does not make up for losing c0


def test_the_engine_runs_an_offered_cache_and_records_its_passes(tiny_engine):
    setting = offered_step_caches()[-1]
    assert setting != facts.STEP_CACHE_OFF, "no cache setting kept every check"
    base = replace(tiny_engine.defaults(), prompt="a red ball", seed=1, steps=STEPS, cfg=3.0)
    cached = tiny_engine.generate(TextToVideo(replace(base, step_cache=setting)))
    assert cached.settings["settings"]["step_cache"] == setting
    passes = cached.settings["transformer_passes"]
    assert passes["passes"] == 2 * STEPS and 0 <= passes["skipped"] < 2 * STEPS
    rows = measured_rows()
    for row in rows:
        if lost_checks(row, rows):  # a measured setting that lost a check is refused with how many
            with pytest.raises(PusaInputError, match=f"step_cache: '{row['setting']}' fails {len(lost_checks(row, rows))} "
                                                     "quality check\\(s\\) on the small model that pass with caching off"):
                tiny_engine.generate(TextToVideo(replace(base, step_cache=row["setting"])))
    plain = tiny_engine.generate(TextToVideo(base))
    assert plain.settings["transformer_passes"] == {"passes": 2 * STEPS, "skipped": 0}
    assert not tiny_engine._components.transformer.is_cache_enabled
    with pytest.raises(PusaInputError, match="step_cache: 'first-block:0.07' was not measured"):
        tiny_engine.generate(TextToVideo(replace(base, step_cache="first-block:0.07")))


def test_the_memory_line_says_how_the_loras_run(tiny_engine):
    report = tiny_engine.memory_report(replace(tiny_engine.defaults(), preset=facts.QUALITY))
    assert report.startswith("cpu (") and report.endswith("LoRAs merged into the weights: no pass computes a LoRA branch.")


def test_the_readme_table_is_the_benchmarks_printout_of_the_stored_rows():
    import importlib.util
    import json

    from pusa_core.cache_choice import MEASURED_FILE

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("step_cache_benchmark", root / "benchmarks" / "step_cache.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    stored = json.loads(MEASURED_FILE.read_text())
    section = (root / "README.md").read_text().split("### Step caching", 1)[1].split("\n## ", 1)[0]
    assert f"--clips {stored['clips']} --write" in section
    assert "\n".join(line for line in section.splitlines() if line.startswith("|")) == benchmark.table(stored["rows"])
