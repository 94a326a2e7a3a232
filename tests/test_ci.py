"""What CI installs: requirements pinned with ==, at exactly the versions these tests run on."""

from __future__ import annotations

import importlib.metadata

from tests.support.pins import read_pins
from tests.support.processes import ROOT


def test_requirements_pin_what_the_tests_run_on() -> None:
    runtime = read_pins(ROOT / "requirements.txt")
    dev = read_pins(ROOT / "requirements-dev.txt")
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    needed = {
        "torch",
        "diffusers",
        "transformers",
        "peft",
        "accelerate",
        "gradio",
        "safetensors",
        "huggingface-hub",
        "imageio-ffmpeg",
        "opencv-python-headless",
        "ftfy",
    }
    assert needed <= set(runtime)
    assert {"pytest", "gradio-client", "playwright", "spaces", "pyyaml"} <= set(dev)
    for name, version in {**runtime, **dev}.items():
        installed = importlib.metadata.version(name).split("+")[0]  # torch's +cpu build of the same version
        assert installed == version, f"{name}: pinned {version}, tests run on {installed}"
