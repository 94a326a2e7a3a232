"""Shared fixtures: the golden files in tests/golden and tiny models built on the fly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pusa_core.engine import Engine
from pusa_core.tiny_models import random_tiny_components
from pusa_core.verify import golden_transformer_config
from tests.support.server import Server, served

# In the repository, so every clone (and any fork's CI) runs the parity tests with nothing beside it.
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
PUSA_GOLDEN = GOLDEN_DIR / "pusa_golden_v1.safetensors"
WAN_T5_GOLDEN = GOLDEN_DIR / "wan_t5_golden_v1.safetensors"
GOLDEN_FILES = (PUSA_GOLDEN, WAN_T5_GOLDEN)

torch.set_num_threads(min(2, torch.get_num_threads()))


def require_golden(path: Path) -> Path:
    """The golden file; its absence fails the test (a skip would hide a parity test that never ran)."""
    if not path.is_file():
        pytest.fail(f"golden file not found at {path}: it is part of the repository (tests/golden/); "
                    "restore it with `git checkout -- tests/golden`", pytrace=False)
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


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """The app over a random tiny engine, served in-process for one test module, with a client."""
    output_dir = tmp_path_factory.mktemp("outputs")
    with served(Engine.from_components(random_tiny_components(), output_dir=output_dir), output_dir) as running:
        yield running
