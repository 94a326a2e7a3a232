"""The ranks of a torchrun launch on gloo: rank 0's engine sends each job, rank 1's follows it.

Two ranks are forked from this process (as in test_parallel.py) and each builds the random tiny
engine with :class:`~pusa_core.ranks.Ranks`; rank 0 runs a list of jobs through ``Engine.generate``
and records each video's frames or its exception, rank 1 runs ``Engine.follow`` and records what
it says. The reference is the single-process engine, in this process. The test fault hook
(tests/support/faulty_rank.py) makes a rank raise mid-job.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pusa_core.engine import Engine, Progress
from pusa_core.parallel import RanksOutOfStep
from pusa_core.media import read_video
import app as app_module
from pusa_core.errors import PusaInputError
from pusa_core.ranks import FAULT_HOOK_ENV, TIMEOUT_ENV, Ranks, check_launch, collective_timeout
from pusa_core.requests import Request, Settings, TextToVideo
from pusa_core.tiny_models import random_tiny_components
from tests.support.processes import free_port, run_ranks

WORLD_SECONDS = 120  # still running after this: hung, fail instead of waiting
GOOD = TextToVideo(Settings(prompt="a red ball bounces", width=96, height=64, num_frames=9, steps=3, seed=3))


def job(name: str, **changes: Any) -> TextToVideo:
    return TextToVideo(replace(GOOD.settings, **changes))


JOBS: list[tuple[str, Request]] = [
    ("good", GOOD),
    ("alpha", job("alpha", lora_alpha=0.5)),  # the followers merge the same LoRA weight
    ("follower_fails", job("f", prompt="a red ball bounces, fail on rank 1")),
    ("after_follower_failure", GOOD),
    ("leader_fails", job("l", prompt="a red ball bounces, fail on rank 0")),
    ("after_leader_failure", GOOD),
    ("cancelled", GOOD),
    ("after_cancel", GOOD),
    ("cfg1", job("c", cfg=1.0)),
]


def frames(path: Path) -> np.ndarray:
    return read_video(path)[0]


def cancel_at_step_2() -> dict[str, Any]:
    """Rank 0's cancel event, set by its own progress after step 2 (as the page's Cancel button would)."""
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        if p.step == 2:
            cancel.set()

    return {"cancel": cancel, "progress": progress}


# A model whose own cfg is 1: auto splits every pass's tokens over the ranks (sequence-parallel).
CFG1 = TextToVideo(replace(GOOD.settings, cfg=1.0))
SEQUENCE_JOBS: list[tuple[str, Request]] = [
    ("good", CFG1),
    ("cancelled", CFG1),
    ("after_cancel", CFG1),
    # Last: a failure inside a pass whose collectives the ranks share leaves them out of step.
    ("follower_fails", TextToVideo(replace(CFG1.settings, prompt="a red ball bounces, fail on rank 1"))),
    ("after_out_of_step", CFG1),
]
WORLDS = {"cfg": (3.0, JOBS), "sequence": (1.0, SEQUENCE_JOBS)}


def _rank_main(rank: int, world: str, port: int, out_dir: Path) -> None:
    torch.set_num_threads(1)
    os.environ[FAULT_HOOK_ENV] = "tests.support.faulty_rank"
    cfg, jobs = WORLDS[world]
    ranks = Ranks.join(timeout=WORLD_SECONDS / 2, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    components = random_tiny_components()
    components.defaults = replace(components.defaults, cfg=cfg)
    engine = Engine.from_components(components, output_dir=out_dir / f"rank{rank}", ranks=ranks)
    outcomes: dict[str, Any] = {}
    if rank == 0:
        assert engine.wait_ready(60).state == "ready", engine.status().message
        outcomes["status"] = engine.status()
        for name, request in jobs:
            try:
                kw = cancel_at_step_2() if name == "cancelled" else {}
                outcomes[name] = frames(engine.generate(request, **kw).video_path)
            except Exception as error:
                outcomes[name] = (type(error).__name__, str(error))
        ranks.leave()
    else:
        said: list[str] = []
        try:
            engine.follow(say=said.append)
        except RanksOutOfStep as error:
            outcomes["ended"] = str(error)
        outcomes["said"] = said
        outcomes["written"] = sorted(p.name for p in (out_dir / "rank1").glob("*")) if (out_dir / "rank1").exists() else []
    torch.save(outcomes, out_dir / f"rank{rank}.pt")


def spawn_world(world: str, out_dir: Path) -> list[dict[str, Any]]:
    run_ranks(_rank_main, (world, free_port(), out_dir), 2, WORLD_SECONDS, "the 2 ranks")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return spawn_world("cfg", tmp_path_factory.mktemp("cfg"))


@pytest.fixture(scope="module")
def sequence_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return spawn_world("sequence", tmp_path_factory.mktemp("sequence"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    engine = Engine.from_components(random_tiny_components(), output_dir=tmp_path_factory.mktemp("single"))
    assert engine.wait_ready(60).state == "ready"
    return {"good": frames(engine.generate(GOOD).video_path), "alpha": frames(engine.generate(JOBS[1][1]).video_path),
            "cfg1": frames(engine.generate(CFG1).video_path)}


def assert_same_video(got: Any, expected: np.ndarray) -> None:
    assert isinstance(got, np.ndarray), f"the job failed: {got}"
    assert got.shape == expected.shape == (9, 64, 96, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_the_two_ranks_share_each_step(ranks: list[dict[str, Any]]) -> None:
    status = ranks[0]["status"]
    assert "ready on 2 ranks" in status.message
    assert "2 processes" in status.placement and "cfg-parallel" in status.placement


@pytest.mark.parametrize("name", ["good", "after_follower_failure", "after_leader_failure", "after_cancel"])
def test_a_job_on_two_ranks_makes_the_single_process_video(ranks, reference, name: str) -> None:
    assert_same_video(ranks[0][name], reference["good"])


def test_followers_apply_the_jobs_lora_weight(ranks, reference) -> None:
    assert_same_video(ranks[0]["alpha"], reference["alpha"])
    assert np.abs(reference["alpha"].astype(int) - reference["good"].astype(int)).max() > 1  # the alpha shows


def test_a_follower_failing_mid_job_ends_it_on_the_leader_with_its_message(ranks) -> None:
    assert ranks[0]["follower_fails"] == (
        "RankFailed", "rank 1 of 2 failed, so every rank stopped this job: RuntimeError: injected failure on rank 1"
    )
    assert "job stopped: RuntimeError: injected failure on rank 1" in ranks[1]["said"]


def test_the_leader_failing_raises_its_own_error_and_the_follower_waits_for_the_next_job(ranks) -> None:
    assert ranks[0]["leader_fails"] == ("RuntimeError", "injected failure on rank 0")
    assert any(line.startswith("job stopped: RankFailed: rank 0 of 2 failed") for line in ranks[1]["said"])


def test_cancel_on_the_leader_stops_every_rank(ranks) -> None:
    name, message = ranks[0]["cancelled"]
    assert name == "GenerationCancelled" and message.startswith("cancelled before step 3 of 3")
    assert f"job stopped: GenerationCancelled: {message}" in ranks[1]["said"]


def test_cfg_1_is_refused_before_anything_is_sent_under_cfg_parallel(ranks) -> None:
    name, message = ranks[0]["cfg1"]
    assert name == "PusaInputError" and message.startswith("cfg: these 2 ranks run cfg-parallel")
    assert not any("cfg" in line for line in ranks[1]["said"])


def test_only_the_leader_writes(ranks) -> None:
    assert ranks[1]["written"] == []


def test_sequence_parallel_ranks_make_the_single_process_video_and_stop_together(sequence_ranks, reference) -> None:
    status = sequence_ranks[0]["status"]
    assert "each runs 1/2 of every pass's tokens (sequence-parallel)" in status.placement
    assert_same_video(sequence_ranks[0]["good"], reference["cfg1"])
    assert_same_video(sequence_ranks[0]["after_cancel"], reference["cfg1"])
    assert sequence_ranks[0]["cancelled"][0] == "GenerationCancelled"


def test_a_failure_inside_a_sequence_parallel_pass_leaves_the_ranks_out_of_step_and_says_restart(sequence_ranks) -> None:
    name, message = sequence_ranks[0]["follower_fails"]
    assert name == "RanksOutOfStep" and "restart" in message
    assert sequence_ranks[0]["after_out_of_step"][0] == "RanksOutOfStep"  # refused without touching the ranks
    assert "injected failure on rank 1" in sequence_ranks[1]["ended"] and "restart all ranks" in sequence_ranks[1]["ended"]


# -- the launch's flags, without ranks ---------------------------------------------------------------
def test_collective_timeout_is_positive_seconds_with_300_by_default() -> None:
    assert collective_timeout(None) == collective_timeout("") == 300.0
    assert collective_timeout("7.5") == 7.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        with pytest.raises(PusaInputError, match=r"^--collective-timeout: .* is not a number of seconds; give a positive"):
            collective_timeout(bad)


def test_app_reads_the_collective_timeout_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert app_module.parse_args([]).collective_timeout == 300.0
    monkeypatch.setenv(TIMEOUT_ENV, "40")
    assert app_module.parse_args([]).collective_timeout == 40.0
    assert app_module.parse_args(["--collective-timeout", "9"]).collective_timeout == 9.0
    monkeypatch.setenv(TIMEOUT_ENV, "never")
    with pytest.raises(SystemExit):
        app_module.parse_args([])
    assert "argument --collective-timeout: 'never' is not a number of seconds" in capsys.readouterr().err


def test_parallel_placements_in_one_process_are_refused_with_the_torchrun_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as stopped:
        app_module.main(["--placement", "cfg-parallel", "--model", "random-tiny"])
    assert str(stopped.value.code).startswith(
        "pusa studio: --placement: cfg-parallel runs one process per GPU, and this is one process; launch it with "
        "torchrun: torchrun --nproc-per-node 2 app.py [same flags]"
    )
    with pytest.raises(PusaInputError, match="^--placement: shard runs in one process, and torchrun started 2"):
        check_launch("shard", 2)
    check_launch("cpu", 2)
    check_launch(None, 1)


def test_one_process_sends_nothing() -> None:
    alone = Ranks()
    assert (alone.leader, alone.parallel, alone.describe()) == (True, False, "one process")
    with alone.job("anything"):
        pass
    alone.leave()
