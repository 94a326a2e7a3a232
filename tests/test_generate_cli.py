"""``python -m pusa_core.generate``: every task to OUT.mp4 + OUT.json, refusals as one line, --jobs, under torchrun."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pusa_core.generate import main
from pusa_core.media import read_video
from tests.support.processes import python_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TINY = ["--model", "random-tiny", "--size", "96x64", "--frames", "9", "--steps", "2"]
TASK_ARGS = {
    "i2v": ["--task", "i2v", "--image", str(EXAMPLES / "sunset.png"), "--noise-multiplier", "0.3"],
    "multiframe": ["--task", "multiframe", "--images", str(EXAMPLES / "ball_start.png"), str(EXAMPLES / "ball_end.png"),
                   "--positions", "0,2", "--multipliers", "0.2,0.5"],
    "v2v": ["--task", "v2v", "--video", str(EXAMPLES / "square.mp4"), "--positions", "0,1", "--multipliers", "0,0.3"],
    "t2v": ["--task", "t2v"],
}
RESULT_LINE = re.compile(r"^(?P<path>.+)\t(?P<seconds>\d+\.\d)\t(?P<seed>\d+)$")


def generate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("task", list(TASK_ARGS))
def test_each_task_writes_the_mp4_and_its_settings_at_out(task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "videos" / f"{task}.mp4"
    status, stdout, stderr = generate(
        capsys, *TINY, *TASK_ARGS[task], "--prompt", "a red ball", "--seed", "1234", "--fps", "12", "--out", str(out)
    )
    assert status == 0, stderr
    line = RESULT_LINE.match(stdout.strip())
    assert line and line["path"] == str(out) and line["seed"] == "1234", stdout
    assert files_under(tmp_path) == [f"videos/{task}.json", f"videos/{task}.mp4"]  # nothing partial left
    frames, fps = read_video(out)
    assert frames.shape == (9, 64, 96, 3) and fps == 12
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["task"] == task
    assert {k: saved["settings"][k] for k in ("seed", "width", "height", "num_frames", "fps", "steps", "prompt")} == {
        "seed": 1234, "width": 96, "height": 64, "num_frames": 9, "fps": 12, "steps": 2, "prompt": "a red ball"
    }
    if task == "i2v":
        assert saved["image"]["name"] == "sunset.png" and saved["noise_multiplier"] == 0.3
    if task in ("multiframe", "v2v"):
        assert saved["positions"][-1] in (1, 2) and len(saved["multipliers"]) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "t2v", "--prompt", "x", "--frames", "10"],
         "generate: --frames: must be 4k+1 (1, 5, ..., 81, ...) up to 201, got 10; try 9"),
        (["--task", "t2v", "--prompt", "x", "--size", "100x64"],
         "generate: --size: width must be a multiple of 16 between 16 and 1920, got 100; try 96"),
        (["--task", "t2v", "--prompt", "x", "--size", "96 by 64"],
         "generate: --size: '96 by 64' is not a size; type WIDTHxHEIGHT, e.g. 832x480"),
        (["--task", "t2v", "--prompt", "x", "--steps", "ten"], "generate: --steps: 'ten' is not a number"),
        (["--task", "t2v", "--prompt", "x", "--alpha", "9"], "generate: --alpha: must be a number from 0 to 5, got 9; 1.4 is Pusa's default"),
        (["--task", "t2v"], "generate: --prompt: is empty; describe the video you want (text-to-video has nothing else to go on)"),
        (["--task", "i2v"], "generate: --image: is missing; i2v needs it"),
        (["--task", "i2v", "--image", "nowhere.png"], "generate: --image: nowhere.png was not found"),
        (["--task", "t2v", "--prompt", "x", "--image", str(EXAMPLES / "sunset.png")],
         "generate: --image: is not used by t2v, which takes only the prompt and the settings"),
        (["--task", "multiframe", "--images", str(EXAMPLES / "ball_start.png"), "--positions", "0,9", "--multipliers", "0,0"],
         "generate: --positions: 9 is out of range: 9 frames have latent indices 0..2"),
        (["--task", "gif"], "generate: --task: invalid choice: 'gif' (choose from 'i2v', 'multiframe', 'v2v', 't2v')"),
        (["--task", "t2v", "--colour", "red"], "generate: --colour: is not a flag of this command; see python -m pusa_core.generate --help"),
        (["--prompt", "x"], "generate: --task: is missing; give one of i2v, multiframe, v2v, t2v"),
        (["--task", "t2v", "--prompt", "x", "--step-cache", "magcache:0.1"],
         "generate: --step-cache: 'magcache:0.1' is not a step-cache setting; write off or KIND:THRESHOLD with KIND "
         "one of first-block, taylorseer (e.g. first-block:0.05)"),
        (["--task", "t2v", "--prompt", "x", "--step-cache", "first-block:0.05"],
         "generate: --step-cache: needs at least 10 steps (the steps it was measured at), got 2; raise steps or set "
         "step_cache to off"),
        (["--task", "t2v", "--prompt", "x", "--out", "clip.gif"], "generate: --out: must be a file name ending in .mp4, got 'clip.gif'"),
    ],
)
def test_a_bad_flag_is_one_line_exit_2_and_nothing_runs(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, stdout, stderr = generate(capsys, *TINY, "--output-dir", str(tmp_path), *argv)
    assert (status, stdout, stderr) == (2, "", message + "\n")
    assert files_under(tmp_path) == []


def test_an_existing_out_is_refused_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"older video")
    argv = [*TINY, *TASK_ARGS["t2v"], "--prompt", "x", "--seed", "5", "--out", str(out)]
    assert generate(capsys, *argv) == (2, "", f"generate: --out: {out} exists; pass --overwrite to replace it, or choose another name\n")
    assert out.read_bytes() == b"older video"
    status, stdout, _ = generate(capsys, *argv, "--overwrite")
    assert status == 0 and stdout.startswith(f"{out}\t")
    assert read_video(out)[0].shape == (9, 64, 96, 3)
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["seed"] == 5


def test_jobs_file_runs_the_good_lines_and_names_the_bad_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.mp4"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([
        json.dumps({"task": "i2v", "image": str(EXAMPLES / "sunset.png"), "prompt": "sunset", "lora_alpha": 1.2, "out": str(good)}),
        "",
        json.dumps({"task": "t2v", "prompt": "a ball", "frames": 10, "out": str(tmp_path / "bad.mp4")}),
        json.dumps({"task": "t2v", "prompt": "a ball"}),
    ]) + "\n")
    status, stdout, stderr = generate(capsys, *TINY, "--seed", "77", "--jobs", str(jobs), "--output-dir", str(tmp_path / "outputs"))
    assert status == 2
    assert f"generate: {jobs}:3: frames: must be 4k+1 (1, 5, ..., 81, ...) up to 201, got 10; try 9\n" in stderr
    lines = [RESULT_LINE.match(line) for line in stdout.splitlines()]
    assert [(m["path"], m["seed"]) for m in lines if m] == [
        (str(good), "77"), (str(next((tmp_path / "outputs").glob("t2v_*_seed77.mp4"))), "77")
    ]
    assert len(lines) == 2
    settings = json.loads(good.with_suffix(".json").read_text())["settings"]
    assert (settings["seed"], settings["lora_alpha"], settings["steps"], settings["width"]) == (77, 1.2, 2, 96)
    assert not (tmp_path / "bad.mp4").exists()


def test_jobs_lines_that_are_not_jobs_are_named_by_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"task": "t2v", "prompt": "x", "colour": "red"}\nnot json\n[1, 2]\n'
                    '{"task": "t2v", "prompt": "x", "alpha": 1, "lora_alpha": 1}\n')
    status, stdout, stderr = generate(capsys, *TINY, "--jobs", str(jobs))
    assert (status, stdout) == (2, "")
    assert stderr.splitlines() == [
        f"generate: {jobs}:1: colour: is not a job field; use task, prompt, negative_prompt, seed, steps, cfg, alpha, "
        "frames, fps, fit, step_cache, lora_alpha, size, image, noise_multiplier, images, positions, multipliers, video, frames_from, out",
        f"generate: {jobs}:2: json: not valid JSON (Expecting value at column 1)",
        f'generate: {jobs}:3: json: must be a JSON object like {{"task": "t2v", "prompt": "..."}}, got [1, 2]',
        f"generate: {jobs}:4: alpha: is given twice, as \"alpha\" and as \"lora_alpha\"; give one",
    ]


def test_jobs_refuses_one_out_for_every_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"task": "t2v", "prompt": "x"}\n')
    status, _, stderr = generate(capsys, *TINY, "--jobs", str(jobs), "--out", str(tmp_path / "all.mp4"))
    assert (status, stderr) == (
        2, 'generate: --out: names one video; with --jobs give each line its own "out" (or none, for --output-dir)\n'
    )


def test_under_torchrun_every_rank_runs_the_job_and_only_rank_0_writes_and_prints(tmp_path: Path) -> None:
    argv = [*TINY, *TASK_ARGS["i2v"], "--prompt", "x", "--seed", "5", "--output-dir", str(tmp_path / "outputs")]
    single = tmp_path / "single.mp4"
    assert main([*argv, "--out", str(single)]) == 0
    out = tmp_path / "videos" / "clip.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pusa_core.generate", *argv, "--out", str(out)],
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert RESULT_LINE.match(done.stdout) and done.stdout.count("\n") == 1  # one line: rank 0's
    assert "ready on 2 ranks" in done.stderr and "[rank 1]" not in done.stderr
    assert files_under(tmp_path / "videos") == ["clip.json", "clip.mp4"]
    assert not (tmp_path / "outputs").exists()
    assert np.abs(read_video(out)[0].astype(int) - read_video(single)[0].astype(int)).max() <= 1


def test_the_module_runs_as_a_command() -> None:
    done = subprocess.run([sys.executable, "-m", "pusa_core.generate", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m pusa_core.generate")
    assert "--jobs FILE.jsonl" in done.stdout and "--task {i2v,multiframe,v2v,t2v}" in done.stdout


def test_unset_values_take_the_loaded_models_own_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped small model's noise multiplier (0 in its defaults.json) is known only once it loads."""
    out = tmp_path / "tiny.mp4"
    status, _, stderr = generate(
        capsys, "--model", "pusa-tiny", "--task", "i2v", "--image", str(EXAMPLES / "ball_start.png"),
        "--frames", "5", "--steps", "1", "--out", str(out),
    )
    assert status == 0, stderr
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["noise_multiplier"] == 0.0
    assert (saved["settings"]["width"], saved["settings"]["height"], saved["settings"]["fps"]) == (64, 64, 8)
