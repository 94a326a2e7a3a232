"""Batches: expanding a form into jobs, the bounds, and running them through the runner on the tiny model."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import gradio as gr
import pytest

from pusa_core.engine import Engine
from pusa_core.errors import PusaInputError
from ui import t2v
from ui.batch import MAX_BATCH, BatchQueue, expand
from ui.batch_panel import batch_slot, cancel_choices, queue_jobs, rows, run_one
from ui.form import build_settings
from ui.runner import Runner

FORM = {
    "prompt": "a red ball", "negative_prompt": "", "seed": 10, "randomize_seed": False, "steps": 2, "cfg": 5.0,
    "lora_alpha": 1.4, "size": "96x64", "fit": "crop", "frames": 9, "fps": 8, "preset": "quality", "extra_loras": "",
    "step_cache": "off",
}


def build(values: dict) -> object:
    return t2v.SPEC.to_request(values, build_settings(values))


def test_n_seeds_count_up_from_the_form_seed_or_a_random_one() -> None:
    jobs = expand(FORM, 3, "increment", False, random.Random(0))
    assert [(j["seed"], j["randomize_seed"], j["prompt"]) for j in jobs] == [(10, False, "a red ball"), (11, False, "a red ball"),
                                                                             (12, False, "a red ball")]
    drawn = expand({**FORM, "randomize_seed": True}, 3, "increment", False, random.Random(0))
    assert [j["seed"] - drawn[0]["seed"] for j in drawn] == [0, 1, 2] and not drawn[0]["randomize_seed"]
    assert [j["randomize_seed"] for j in expand(FORM, 2, "random", False, random.Random(0))] == [True, True]


def test_one_prompt_per_line_skips_empty_lines_and_gives_each_line_the_same_seeds() -> None:
    jobs = expand({**FORM, "prompt": "a red ball\n\n  a blue square  \n"}, 2, "increment", True, random.Random(0))
    assert [(j["prompt"], j["seed"]) for j in jobs] == [("a red ball", 10), ("a red ball", 11), ("a blue square", 10),
                                                        ("a blue square", 11)]


@pytest.mark.parametrize(
    "changes, count, per_line, field, message",
    [
        ({}, 0, False, "Batch", "must be from 1 to 8 videos, got 0"),
        ({}, 9, False, "Batch", "must be from 1 to 8 videos, got 9"),
        ({}, 2.5, False, "Batch", "must be a whole number of videos from 1 to 8, got 2.5"),
        ({"prompt": "a\nb\nc"}, 3, True, "Batch", "3 videos x 3 prompt lines is 9 jobs; a batch runs at most 8"),
        ({"prompt": "\n".join("abcdefghi")}, 1, True, "prompt", "has 9 lines; a batch takes at most 8"),
        ({"prompt": " \n "}, 1, True, "prompt", "is empty; write one prompt per line"),
        ({"seed": 4294967294}, 3, False, "seed", "4294967294 + 2 passes the largest seed, 4294967295; type a seed of at most 4294967293"),
        ({"seed": None}, 2, False, "seed", "is empty; type a whole number"),
    ],
)
def test_bad_batches_are_refused_naming_the_field(changes: dict, count: object, per_line: bool, field: str, message: str) -> None:
    with pytest.raises(PusaInputError) as refused:
        expand({**FORM, **changes}, count, "increment", per_line, random.Random(0))
    assert refused.value.field == field and refused.value.message.startswith(message)


def test_a_session_may_have_at_most_eight_jobs_waiting_and_all_sessions_at_most_max_queue(tiny_engine: Engine) -> None:
    queue = BatchQueue(max_waiting=10)
    requests = [build(v) for v in expand(FORM, MAX_BATCH, "increment", False, random.Random(0))]
    jobs, start = queue.add("alice", "t2v", "Text-to-Video", requests)
    assert start and len(jobs) == MAX_BATCH
    with pytest.raises(PusaInputError, match="you have 8 jobs queued or running and asked for 1 more; at most 8"):
        queue.add("alice", "t2v", "Text-to-Video", requests[:1])
    _, start = queue.add("bob", "t2v", "Text-to-Video", requests[:2])
    assert start
    with pytest.raises(PusaInputError, match=r"the server has 10 batch jobs waiting and takes at most 10 \(its --max-queue\)"):
        queue.add("carol", "t2v", "Text-to-Video", requests[:1])
    assert queue.cancel("bob", jobs[0].id) == f"Job #{jobs[0].id} is not in your queue."  # alice's job
    queue.leave("alice")
    assert queue.jobs("alice") == [] and jobs[0].cancel.is_set()
    queue.add("carol", "t2v", "Text-to-Video", requests[:1])


def run_all(queue: BatchQueue, runner: Runner, session: str) -> list[list]:
    """What the page's loop does: run the next job while the queue says there are more."""
    results = []
    while queue.more(session, "t2v"):
        results.append(asyncio.run(run_one(queue, runner, session, "t2v")))
    return results


def test_three_seeds_make_three_outputs_and_a_cancelled_queued_job_never_runs(tiny_engine: Engine) -> None:
    runner = Runner(tiny_engine)
    queue = BatchQueue()
    before = set(tiny_engine.outputs.root.glob("*.mp4"))
    jobs, start = queue_jobs(queue, runner, "s1", "t2v", "Text-to-Video", build, FORM, 3, "increment", False, random.Random(0))
    assert start and [j.seed for j in jobs] == [10, 11, 12]
    results = run_all(queue, runner, "s1")
    assert [r[2] for r in results] == [10, 11, 12]
    assert all(r[3].startswith(f"Batch job {i + 1} of 3: Done in ") for i, r in enumerate(results))
    made = set(tiny_engine.outputs.root.glob("*.mp4")) - before
    assert sorted(json.loads(p.with_suffix(".json").read_text())["settings"]["seed"] for p in made) == [10, 11, 12]
    assert [row[-1] for row in rows(queue.jobs("s1"), runner)] == [f"done: {Path(r[0]).name}" for r in results]

    before = set(tiny_engine.outputs.root.glob("*.mp4"))
    jobs, start = queue_jobs(queue, runner, "s1", "t2v", "Text-to-Video", build, {**FORM, "seed": 20}, 3, "increment", False,
                             random.Random(0))
    assert start  # the first loop ended, so this batch starts its own
    assert [c[1] for c in cancel_choices(queue.jobs("s1"))] == [j.id for j in jobs]
    assert queue.cancel("s1", jobs[1].id) == f"Cancelled job #{jobs[1].id}: it will not run."
    results = run_all(queue, runner, "s1")
    assert [r[2] for r in results] == [20, 22]
    made = set(tiny_engine.outputs.root.glob("*.mp4")) - before
    assert sorted(json.loads(p.with_suffix(".json").read_text())["settings"]["seed"] for p in made) == [20, 22]
    assert [j.state for j in queue.jobs("s1")[-3:]] == ["done", "cancelled", "done"]
    assert queue.cancel("s1", jobs[0].id) == f"Job #{jobs[0].id} has already done; nothing to cancel."


def test_a_bad_job_refuses_the_whole_batch_before_anything_is_queued(tiny_engine: Engine) -> None:
    runner, queue = Runner(tiny_engine), BatchQueue()
    with pytest.raises(gr.Error) as refused:
        queue_jobs(queue, runner, "s2", "t2v", "Text-to-Video", build, {**FORM, "frames": 8}, 3, "increment", False,
                   random.Random(0))
    assert refused.value.message.startswith("Frames must be 4k+1")
    with pytest.raises(gr.Error) as refused:
        queue_jobs(queue, runner, "s2", "t2v", "Text-to-Video", build, FORM, 12, "increment", False, random.Random(0))
    assert refused.value.message == "Batch must be from 1 to 8 videos, got 12"
    assert queue.jobs("s2") == []


def test_cancelling_the_running_job_stops_it_at_its_next_step(tiny_engine: Engine) -> None:
    runner, queue = Runner(tiny_engine), BatchQueue()
    long = {**FORM, "steps": 100, "size": "192x192", "frames": 17}
    jobs, _ = queue_jobs(queue, runner, "s3", "t2v", "Text-to-Video", build, long, 1, "increment", False, random.Random(0))
    before = set(tiny_engine.outputs.root.iterdir())

    async def run_and_cancel() -> list:
        running = asyncio.create_task(run_one(queue, runner, "s3", "t2v"))
        while runner.latest_progress("s3", batch_slot("t2v")) is None or runner.latest_progress("s3", batch_slot("t2v")).step in (None, 0):
            await asyncio.sleep(0.01)
        assert queue.cancel("s3", jobs[0].id) == f"Cancelling job #{jobs[0].id}: it stops at the next denoising step."
        return await running

    video, _, _, message = asyncio.run(run_and_cancel())
    assert video is None and message.startswith("Batch job 1 of 1: Cancelled after step")
    assert queue.jobs("s3")[0].state == "cancelled" and set(tiny_engine.outputs.root.iterdir()) == before


def test_a_loop_that_cannot_go_on_marks_its_queued_jobs_and_the_next_batch_starts_a_new_one(tiny_engine: Engine) -> None:
    queue = BatchQueue()
    requests = [build(v) for v in expand(FORM, 3, "increment", False, random.Random(0))]
    jobs, start = queue.add("s4", "t2v", "Text-to-Video", requests)
    assert start and queue.add("s4", "t2v", "Text-to-Video", requests[:1])[1] is False  # the loop is already going
    assert queue.take("s4", "t2v").id == jobs[0].id
    assert queue.stall("s4", "t2v", "the server's queue was full; queue them again") == 3
    assert [(j.state, j.result) for j in queue.jobs("s4")][1] == ("failed", "not started: the server's queue was full; queue them again")
    assert queue.add("s4", "t2v", "Text-to-Video", requests[:1])[1] is True
