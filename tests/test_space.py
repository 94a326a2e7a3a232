"""The Hugging Face Space: README front matter, and the ZeroGPU wrapper (detection, duration estimate)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from pusa_core import facts
from pusa_core.errors import PusaInputError
from pusa_core.requests import Settings, TextToVideo, preset_settings
from pusa_core.weights import BASE_REPO_ID, LORA_REPO_ID
from tests.support.pins import read_pins
from tests.support.processes import ROOT, free_port, python_env
from ui import zerogpu
from ui.runner import _request_size
from ui.zerogpu import ZeroGpuJob


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with YAML front matter between --- lines"
    return yaml.safe_load(match.group(1))


def test_readme_front_matter_is_a_gradio_space_with_preloaded_weights() -> None:
    meta = front_matter()
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == read_pins(ROOT / "requirements.txt")["gradio"]
    assert meta["python_version"] == "3.11"
    assert (ROOT / meta["app_file"]).is_file(), f"app_file {meta['app_file']} does not exist"
    assert meta["suggested_hardware"] in {"a100-large", "h100", "l40sx1", "a10g-large", "zero-a10g"}
    assert re.fullmatch(r"\d+[mh]", meta["startup_duration_timeout"])
    assert meta["preload_from_hub"] == [BASE_REPO_ID, f"{LORA_REPO_ID} pusa_v1.pt"]
    assert len(meta["short_description"]) <= 60


def generate(prompt: str, steps: int, frames: int, width: int, height: int, cfg: float = 5.0) -> str:
    return f"{prompt}:{steps}:{frames}:{width}x{height}:{cfg}"


def size_of_generate(prompt: str, steps: int, frames: int, width: int, height: int, cfg: float = 5.0) -> ZeroGpuJob:
    return ZeroGpuJob(steps, frames, width, height, cfg)


def test_zerogpu_detection_follows_the_space_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPACE_ID", "SPACES_ZERO_GPU"):
        monkeypatch.delenv(name, raising=False)
    assert not zerogpu.on_zerogpu()
    monkeypatch.setenv("SPACE_ID", "someone/pusa-studio")
    assert not zerogpu.on_zerogpu()  # a Space on dedicated hardware
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert zerogpu.on_zerogpu()


def test_off_zerogpu_the_function_is_returned_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert zerogpu.wrap_for_zerogpu(generate, size_of_generate) is generate


def test_the_apps_jobs_are_sized_from_their_settings() -> None:
    duration = zerogpu.duration_for(_request_size)  # the sizer the app's runner wraps its job with
    default = TextToVideo(Settings(prompt="a cat"))
    assert duration(default, None, None) == 348
    assert duration(TextToVideo(Settings(steps=4, num_frames=17)), None, None) == zerogpu.MIN_SECONDS
    assert duration(TextToVideo(Settings(steps=50, width=1280, height=720)), None, None) == zerogpu.MAX_SECONDS


def test_the_estimate_follows_the_preset_and_the_step_cache() -> None:
    duration = zerogpu.duration_for(_request_size)
    quality = Settings(prompt="a cat")
    fast = preset_settings(quality, facts.FAST)
    assert (fast.steps, fast.cfg) == (4, 1.0)  # 4 passes against Quality's 20
    assert duration(TextToVideo(quality), None, None) == 348
    assert duration(TextToVideo(fast), None, None) == 118
    # TaylorSeer's fixed schedule at 10 steps skips steps 3, 5 and 7: 14 passes of 20 are certain.
    assert duration(TextToVideo(replace(quality, step_cache="taylorseer:2")), None, None) == 262
    # first-block decides as it goes, so the estimate keeps every pass.
    assert duration(TextToVideo(replace(quality, step_cache="first-block:0.1")), None, None) == 348
    assert duration(TextToVideo(replace(quality, step_cache="someday")), None, None) == zerogpu.MIN_SECONDS


def test_zerogpu_durations_are_sane_for_small_and_large_jobs() -> None:
    duration = zerogpu.duration_for(size_of_generate)
    small = duration("a cat", 4, 17, 832, 480)
    default = duration("a cat", steps=10, frames=81, width=832, height=480, cfg=5.0)
    no_cfg = duration("a cat", 10, 81, 832, 480, 1.0)
    more_steps = duration("a cat", 20, 81, 832, 480, 5.0)
    huge = duration("a cat", 50, 81, 1280, 720, 5.0)
    assert small == zerogpu.MIN_SECONDS == 60
    assert 120 <= default <= 600 and default == 348
    assert no_cfg < default < more_steps < huge == zerogpu.MAX_SECONDS
    assert duration("a cat", 0, 81, 832, 480) == zerogpu.MIN_SECONDS  # bad input: the task reports it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 81, 832, 480, 5.0), "steps: must be a whole number from 1 to 100, got 0"),
        ((10, 80, 832, 480, 5.0), "num_frames: must be 4k+1 (e.g. 17, 49, 81), got 80"),
        ((10, 205, 832, 480, 5.0), "num_frames: must be a whole number from 1 to 201, got 205"),
        ((10, 81, 8, 480, 5.0), "width: must be a whole number from 16 to 1920, got 8"),
        ((10, 81, 832, 484, 5.0), "height: must be a multiple of 16, got 484"),
        ((10, 81, 832, 480, 0.5), "cfg: must be a number from 1 to 20, got 0.5"),
    ],
)
def test_zerogpu_duration_refuses_what_the_engine_refuses(args: tuple, message: str) -> None:
    with pytest.raises(PusaInputError, match=f"^{re.escape(message)}$"):
        zerogpu.zerogpu_duration(*args)


def test_zerogpu_module_does_not_import_torch_gradio_or_spaces() -> None:
    code = "import sys, ui.zerogpu; print(sorted(m for m in ('torch', 'gradio', 'spaces') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=python_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_on_zerogpu_spaces_gpu_wraps_the_function() -> None:
    import torch

    if torch.version.cuda is None:
        pytest.skip("spaces' ZeroGPU mode needs a CUDA build of torch; this torch is CPU-only")
    code = (
        "from ui.zerogpu import ZeroGpuJob, wrap_for_zerogpu\n"
        "def generate(prompt, steps, frames, width, height, cfg=5.0): return prompt\n"
        "def size(prompt, steps, frames, width, height, cfg=5.0): return ZeroGpuJob(steps, frames, width, height, cfg)\n"
        "wrapped = wrap_for_zerogpu(generate, size)\n"
        "print(wrapped is not generate, hasattr(wrapped, 'zerogpu'))\n"
    )
    env = python_env(
        SPACE_ID="someone/pusa-studio",
        SPACES_ZERO_GPU="true",
        SPACES_ZERO_DEVICE_API_URL=f"http://127.0.0.1:{free_port()}",  # closed: nothing listens there
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
