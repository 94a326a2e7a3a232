"""`python -m pusa_core.verify`: passes on the shipped golden files, fails on a tampered one."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import GOLDEN_DIR, PUSA_GOLDEN


def _verify(*paths):
    return subprocess.run([sys.executable, "-m", "pusa_core.verify", *map(str, paths)], capture_output=True, text=True, timeout=300)


def test_golden_files_pass(pusa_golden):
    run = _verify(*sorted(GOLDEN_DIR.glob("*.safetensors")))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok  ") == 7 and "FAIL" not in run.stdout
    assert "case.start_end" in run.stdout and "last_hidden_state" in run.stdout


def test_tampered_file_fails(pusa_golden, tmp_path):
    with safe_open(str(PUSA_GOLDEN), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(PUSA_GOLDEN))
    tensors["case.i2v.final_latents"] = tensors["case.i2v.final_latents"] + 1e-3
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    run = _verify(tmp_path / "bad.safetensors")
    assert run.returncode == 1
    assert "FAIL case.i2v" in run.stdout and "ok   case.t2v" in run.stdout


def test_not_a_golden_file(tmp_path):
    save_file({"x": torch.zeros(1)}, tmp_path / "x.safetensors")
    run = _verify(tmp_path / "x.safetensors")
    assert run.returncode == 1 and "not a golden file" in run.stdout and "Traceback" not in run.stderr
