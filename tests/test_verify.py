"""`python -m pusa_core.verify`: passes on the repository's golden files, fails on a tampered one; the
golden files ship inside the repository, so no test depends on anything beside the project."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import GOLDEN_DIR, GOLDEN_FILES, PUSA_GOLDEN, require_golden

ROOT = Path(__file__).resolve().parents[1]


def _verify(*paths):
    return subprocess.run([sys.executable, "-m", "pusa_core.verify", *map(str, paths)], capture_output=True, text=True, timeout=300)


def _readme_verify_files() -> list[Path]:
    """The files README's verify command names, its glob expanded from the project root."""
    match = re.search(r"^\.venv/bin/python -m pusa_core\.verify (\S+)", (ROOT / "README.md").read_text(), re.M)
    assert match, "README.md lost its `python -m pusa_core.verify` command"
    return sorted(ROOT.glob(match.group(1)))


def test_readme_verify_command_passes_on_the_golden_files():
    files = _readme_verify_files()
    assert files == sorted(GOLDEN_FILES)
    run = _verify(*map(require_golden, files))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok  ") == 7 and "FAIL" not in run.stdout
    assert "case.start_end" in run.stdout and "last_hidden_state" in run.stdout


def test_golden_files_live_in_the_repository():
    """A fresh clone runs every parity test with nothing beside it: no path leads out of the project."""
    assert GOLDEN_DIR == ROOT / "tests" / "golden"
    assert [path.name for path in GOLDEN_FILES if not path.is_file()] == []
    assert (GOLDEN_DIR / "README.md").is_file()
    needles = ("../shared", "shared/golden")
    sources = [ROOT / "README.md", ROOT / ".ci" / "run", *(ROOT / "scripts").iterdir(), *(ROOT / "tests").glob("*.py"),
               *(ROOT / "pusa_core").rglob("*.py")]
    pointing_out = [str(p.relative_to(ROOT)) for p in sources
                    if p != Path(__file__).resolve() and any(n in p.read_text() for n in needles)]
    assert pointing_out == []


def test_a_missing_golden_file_fails_instead_of_skipping(tmp_path):
    missing = tmp_path / "pusa_golden_v1.safetensors"
    with pytest.raises(BaseException) as outcome:  # BaseException: pytest's skip is one too, and must not pass
        require_golden(missing)
    assert outcome.type is pytest.fail.Exception
    assert str(outcome.value) == (f"golden file not found at {missing}: it is part of the repository (tests/golden/); "
                                  "restore it with `git checkout -- tests/golden`")


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
