"""Shared fixtures: golden files from ../shared/golden and tiny models built on the fly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pusa_core.engine import Engine
from pusa_core.tiny_models import random_tiny_components
from pusa_core.verify import golden_transformer_config

GOLDEN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
PUSA_GOLDEN = GOLDEN_DIR / "pusa_golden_v1.safetensors"

torch.set_num_threads(min(2, torch.get_num_threads()))


def require_golden(path: Path) -> Path:
    """The golden file, or a skip on a developer machine without it; in CI (CI set) its absence fails."""
    if not path.is_file():
        message = f"golden file not found at {path} (shared/ must sit beside the project root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def pusa_golden() -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of the Pusa golden file."""
    require_golden(PUSA_GOLDEN)
    with safe_open(str(PUSA_GOLDEN), framework="pt") as f:
        meta = json.loads(f.metadata()["pusa_golden"])
    return meta, load_file(str(PUSA_GOLDEN))


@pytest.fixture(scope="session")
def golden_config(pusa_golden) -> dict:
    return golden_transformer_config(pusa_golden[0]["config"])


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory) -> Engine:
    engine = Engine.from_components(random_tiny_components(), tmp_path_factory.mktemp("outputs"))
    assert engine.wait_ready(60).state == "ready"
    return engine
