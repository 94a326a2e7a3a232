"""benchmarks/gpu_check.py without a GPU: its message and exit status, and its code paths on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from pusa_core.tiny_models import TINY_TRANSFORMER
from tests.support.processes import ROOT, python_env

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gets")
def test_without_a_gpu_it_says_so_and_exits_1():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=python_env(), timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip() == (
        "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False). It needs one GPU with 80 GB or "
        "more, or two or more under torchrun; `--device cpu --config SMALL.json` runs its code paths on the CPU instead.")


def test_its_code_paths_run_on_the_cpu_with_a_small_config(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_TRANSFORMER))
    argv = ["--device", "cpu", "--config", str(config), "--size", "64x64", "--frames", "9", "--lora-rank", "4",
            "--repeats", "1"]
    assert gpu_check.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("CPU, 80 GiB; tiny.json, LoRA rank 4; 64x64, 9 frames (48 tokens); torch ")
    assert out[2:4] == ["| timesteps | s / pass | s / step (cfg 5) | TFLOP/s |", "|---|---|---|---|"]
    assert out[4].startswith("| scalar [1] | ") and out[5].startswith("| per-frame [1, 3] | ")
    assert out[4].endswith("| - (not the 14B) |")
    model = gpu_check.build(gpu_check.read_config(config), torch.device("cpu"), 4)
    assert model.blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # kept fp32, as loaded
    assert torch.isfinite(model.rope.freqs_cos).all() and model.rope.freqs_cos.abs().max() <= 1
    assert 0.015 < model.blocks[0].ffn.net[2].base_layer.weight.float().std() < 0.025
    # The presets' table follows the planner lines: Quality's 20 passes against Fast's 4, merged and not.
    table = out.index("| preset | steps | cfg | passes | s / job, LoRA unmerged | s / job, LoRA merged |")
    assert out[table + 2].startswith("| quality | 10 | 5 | 20 | ") and out[table + 3].startswith("| fast | 4 | 1 | 4 | ")
    assert out[table + 4].startswith("Merged LoRA: ") and out[table + 4].endswith("quality / fast per job (merged): 5.0x")
    assert not any(layer.merged for layer in model.modules() if hasattr(layer, "merged"))


def test_preset_jobs_and_their_seconds_from_a_measured_pass():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.preset_jobs() == [("quality", 10, 5.0, 20), ("fast", 4, 1.0, 4)]
    assert gpu_check.preset_lines(gpu_check.preset_jobs(), 30.0, 25.0)[2:] == [
        "| quality | 10 | 5 | 20 | 600.0 | 500.0 |",
        "| fast | 4 | 1 | 4 | 120.0 | 100.0 |",
        "Merged LoRA: 25.00 s / pass against 30.00 unmerged (1.20x); quality / fast per job (merged): 5.0x",
    ]
    model = gpu_check.build(json.loads(json.dumps(TINY_TRANSFORMER)), torch.device("cpu"), 4)
    before = model.blocks[0].ffn.net[2].base_layer.weight.clone()
    assert gpu_check.set_merged(model, True) == 10 * len(model.blocks)  # every adapted linear of every block
    assert not torch.equal(model.blocks[0].ffn.net[2].base_layer.weight, before)
    gpu_check.set_merged(model, False)
    torch.testing.assert_close(model.blocks[0].ffn.net[2].base_layer.weight, before, rtol=0, atol=0.02)
