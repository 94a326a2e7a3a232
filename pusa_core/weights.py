"""Weight discovery: which model the app can run from what is on disk, and what is missing.

Shared by the app (which model to load), ``python -m pusa_core.download`` (where files go) and
the preflight report printed at start. Nothing here touches the network.

Layouts understood, under the weights dir (default ``weights/``):

- ``Wan2.1-T2V-14B-Diffusers/``: the diffusers layout of ``Wan-AI/Wan2.1-T2V-14B-Diffusers``.
- ``PusaV1/pusa_v1.pt``: the LoRA file of ``RaphaelLiu/PusaV1``.
- ``PusaV1/Wan2.1-T2V-14B/``: the original layout that Pusa's own README downloads into
  ``model_zoo/PusaV1`` (six transformer shards, ``Wan2.1_VAE.pth``, the UMT5 ``.pth`` and the
  ``google/umt5-xxl`` tokenizer).
- ``Wan2.2-Lightning/Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/low_noise_model.safetensors``: the
  LightX2V LoRA of ``lightx2v/Wan2.2-Lightning`` that the Fast preset stacks on Pusa's
  (``python -m pusa_core.download --lightx2v``).
- ``pusa-tiny/``: the small model shipped in the repository (diffusers-style components plus
  ``pusa_lora.safetensors``).

The Hugging Face cache (``HF_HOME``) is searched too, since a Space's ``preload_from_hub`` and
``python -m pusa_core.download --cache`` put the repositories there.
"""

from __future__ import annotations

import json
import shlex
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError, safe_open

BASE_REPO_ID = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
ORIGINAL_BASE_REPO_ID = "Wan-AI/Wan2.1-T2V-14B"
LORA_REPO_ID = "RaphaelLiu/PusaV1"
LORA_FILENAME = "pusa_v1.pt"

# The step- and CFG-distilled LoRA Pusa's README pairs with Pusa for 4 steps at cfg 1 (its --lightx2v).
LIGHTX2V_REPO_ID = "lightx2v/Wan2.2-Lightning"
LIGHTX2V_FILENAME = "Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/low_noise_model.safetensors"
LIGHTX2V_DIRNAME = "Wan2.2-Lightning"

DIFFUSERS_DIRNAME = "Wan2.1-T2V-14B-Diffusers"
LORA_DIRNAME = "PusaV1"
ORIGINAL_DIRNAME = "Wan2.1-T2V-14B"
TINY_DIRNAME = "pusa-tiny"
TINY_LORA_FILENAME = "pusa_lora.safetensors"
DEFAULT_WEIGHTS_DIR = Path("weights")
# The small model travels with the code, so a Docker volume or a --weights-dir elsewhere still has it.
SHIPPED_TINY_DIR = Path(__file__).resolve().parent.parent / "weights" / TINY_DIRNAME

MODEL_CHOICES = ("auto", "pusa-14b", "pusa-tiny")
MODEL_COMPONENTS = ("transformer", "vae", "text_encoder")
ORIGINAL_SHARDS = tuple(f"diffusion_pytorch_model-{i:05d}-of-00006.safetensors" for i in range(1, 7))
ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = "google/umt5-xxl"
_LISTED_MISSING = 6  # how many missing files a message names before it says "and N more"
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class WeightsError(ValueError):
    """The requested model cannot run from the files on disk; the message says what to fetch."""


@dataclass(frozen=True)
class ModelSource:
    """Where the model the app will run lives."""

    kind: Literal["diffusers", "original", "tiny"]
    base_dir: Path
    lora_path: Path | None
    name: str
    is_small: bool


@dataclass(frozen=True)
class WeightItem:
    """One thing the preflight looked for: a base model folder or a LoRA file."""

    label: str
    path: Path
    problems: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class PreflightReport:
    """What the app start found, what is missing, and how to fetch it."""

    found: tuple[WeightItem, ...]
    missing: tuple[WeightItem, ...]
    source: ModelSource | None
    summary: str
    fetch_command: str | None


def fetch_command(weights_dir: Path) -> str:
    """The exact command that downloads the real weights into ``weights_dir``."""
    command = "python -m pusa_core.download"
    if Path(weights_dir) != DEFAULT_WEIGHTS_DIR:
        command += f" --local-dir {shlex.quote(str(weights_dir))}"
    return command


def lightx2v_fetch_command(weights_dir: Path) -> str:
    """The exact command that downloads the Fast preset's LightX2V LoRA into ``weights_dir``."""
    command = "python -m pusa_core.download --lightx2v"
    if Path(weights_dir) != DEFAULT_WEIGHTS_DIR:
        command += f" --local-dir {shlex.quote(str(weights_dir))}"
    return command


def find_lightx2v(weights_dir: Path, hf_cache_dir: Path | None = None) -> Path | None:
    """The LightX2V LoRA file, complete, under ``weights_dir`` or in the Hugging Face cache; None when absent."""
    candidates = [Path(weights_dir) / LIGHTX2V_DIRNAME / LIGHTX2V_FILENAME]
    cached = _cached_file(LIGHTX2V_REPO_ID, LIGHTX2V_FILENAME, hf_cache_dir)
    if cached is not None:
        candidates.append(cached)
    return next((path for path in candidates if not lora_problems(path)), None)


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file, or None when it is.

    safetensors refuses a file whose header does not cover exactly the bytes present, so this
    also catches a truncated download without reading the tensors.
    """
    if problem := _file_problem(path):
        return problem
    try:
        with safe_open(path, framework="numpy"):
            return None
    except (SafetensorError, OSError) as exc:
        return f"unreadable or truncated ({exc})"


def _file_problem(path: Path) -> str | None:
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete ``torch.save`` file, or None when it is.

    ``torch.save`` writes a zip archive whose directory sits at the end of the file, so opening the
    directory (a few KB, no tensor data read) catches a truncated download.
    """
    if problem := _file_problem(path):
        return problem
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        with path.open("rb") as f:
            if f.read(2) == b"PK":
                return "truncated: the zip directory at its end is missing; download it again"
        return (
            "not a zip-format torch.save file (an older torch format or another kind of file); "
            "save it again with torch.save, or as .safetensors"
        )
    except OSError as exc:
        return f"unreadable ({exc})"
    if not any(name.endswith("/data.pkl") for name in names):
        return "a zip file without data.pkl, so not a torch.save checkpoint"
    return None


def _describe(root: Path, relative: str, problem: str) -> str:
    return f"{root / relative}: {problem}"


def _weights_problems(component_dir: Path, root: Path) -> list[str]:
    """Problems of one component's weights: every shard its index lists, or its single file."""
    label = component_dir.relative_to(root).as_posix()
    indexes = sorted(component_dir.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            return [_describe(root, f"{label}/{indexes[0].name}", f"unreadable index ({exc})")]
        shards = sorted(set(weight_map.values()))
    else:
        shards = sorted(p.name for p in component_dir.glob("*.safetensors"))
        if not shards:
            return [_describe(root, f"{label}/*.safetensors", "missing")]
    problems = []
    for shard in shards:
        problem = safetensors_problem(component_dir / shard)
        if problem:
            problems.append(_describe(root, f"{label}/{shard}", problem))
    return problems


def _tokenizer_problems(tokenizer_dir: Path, root: Path) -> list[str]:
    if any((tokenizer_dir / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        return []
    label = tokenizer_dir.relative_to(root).as_posix()
    return [_describe(root, f"{label}/tokenizer.json (or spiece.model)", "missing")]


def _component_problems(root: Path) -> list[str]:
    problems = []
    for component in MODEL_COMPONENTS:
        component_dir = root / component
        if not component_dir.is_dir():
            problems.append(_describe(root, f"{component}/", "folder missing"))
            continue
        if not (component_dir / "config.json").is_file():
            problems.append(_describe(root, f"{component}/config.json", "missing"))
        problems += _weights_problems(component_dir, root)
    return problems + _tokenizer_problems(root / "tokenizer", root)


def diffusers_problems(root: Path) -> list[str]:
    """What a diffusers-layout Wan2.1-T2V-14B folder lacks (empty when it is complete)."""
    if not root.is_dir():
        return [f"{root}: folder missing"]
    problems = []
    if not (root / "model_index.json").is_file():
        problems.append(_describe(root, "model_index.json", "missing"))
    return problems + _component_problems(root)


def original_problems(root: Path) -> list[str]:
    """What an original-layout Wan2.1-T2V-14B folder (Pusa README's ``model_zoo``) lacks."""
    if not root.is_dir():
        return [f"{root}: folder missing"]
    problems = []
    for shard in ORIGINAL_SHARDS:
        problem = safetensors_problem(root / shard)
        if problem:
            problems.append(_describe(root, shard, problem))
    for name in (ORIGINAL_VAE, ORIGINAL_T5):
        problem = _file_problem(root / name)
        if problem:
            problems.append(_describe(root, name, problem))
    return problems + _tokenizer_problems(root / ORIGINAL_TOKENIZER, root)


def tiny_problems(root: Path) -> list[str]:
    """What the small model's folder lacks (empty when it is complete)."""
    if not root.is_dir():
        return [f"{root}: folder missing"]
    problems = _component_problems(root)
    problem = safetensors_problem(root / TINY_LORA_FILENAME)
    if problem:
        problems.append(_describe(root, TINY_LORA_FILENAME, problem))
    return problems


def lora_problems(path: Path) -> list[str]:
    """Why the LoRA file ``path`` cannot be read, judged from its header alone (no tensor is read)."""
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        problem = safetensors_problem(path)
    elif suffix in TORCH_SUFFIXES:
        problem = torch_file_problem(path)
    else:
        problem = _file_problem(path) or (
            f"not a LoRA file name: expected {SAFETENSORS_SUFFIX} or a torch file ({', '.join(TORCH_SUFFIXES)})"
        )
    return [f"{path}: {problem}"] if problem else []


def _cached_file(repo_id: str, filename: str, hf_cache_dir: Path | None) -> Path | None:
    """The path of ``filename`` in the HF cache snapshot that the repo's ``main`` ref points to."""
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir or hf_constants.HF_HUB_CACHE)
    return Path(cached) if isinstance(cached, str) else None


def _is_original_folder(path: Path) -> bool:
    return any((path / name).exists() for name in (*ORIGINAL_SHARDS, ORIGINAL_VAE, ORIGINAL_T5))


def _explicit_base(base_dir: Path) -> tuple[Literal["diffusers", "original"], Path]:
    """Classify a --base-dir: a diffusers folder, an original folder, or ``model_zoo/PusaV1``."""
    if not base_dir.is_dir():
        raise WeightsError(f"--base-dir: {base_dir} is not a folder. Give the path of a Wan2.1-T2V-14B download.")
    if (base_dir / "model_index.json").exists() or (base_dir / "transformer").is_dir():
        return "diffusers", base_dir
    if (base_dir / ORIGINAL_DIRNAME).is_dir():
        return "original", base_dir / ORIGINAL_DIRNAME
    if _is_original_folder(base_dir):
        return "original", base_dir
    raise WeightsError(
        f"--base-dir: {base_dir} is neither a diffusers folder (with model_index.json) nor an original "
        f"Wan2.1-T2V-14B folder (with {ORIGINAL_SHARDS[0]}). Point it at one of those."
    )


@dataclass(frozen=True)
class _Candidate:
    kind: Literal["diffusers", "original"]
    base_dir: Path
    problems: tuple[str, ...]
    label: str


def _candidate(kind: Literal["diffusers", "original"], base_dir: Path) -> _Candidate:
    if kind == "diffusers":
        return _Candidate(kind, base_dir, tuple(diffusers_problems(base_dir)), "Wan2.1-T2V-14B base (diffusers layout)")
    return _Candidate(kind, base_dir, tuple(original_problems(base_dir)), "Wan2.1-T2V-14B base (original layout)")


def _base_candidates(weights_dir: Path, base_dir: Path | None, hf_cache_dir: Path | None) -> list[_Candidate]:
    if base_dir is not None:
        return [_candidate(*_explicit_base(Path(base_dir)))]
    candidates = [_candidate("diffusers", weights_dir / DIFFUSERS_DIRNAME)]
    original = weights_dir / LORA_DIRNAME / ORIGINAL_DIRNAME
    if original.is_dir():
        candidates.append(_candidate("original", original))
    cached_index = _cached_file(BASE_REPO_ID, "model_index.json", hf_cache_dir)
    if cached_index is not None:
        candidates.append(_candidate("diffusers", cached_index.parent))
    return candidates


def _lora_candidates(weights_dir: Path, base: _Candidate, hf_cache_dir: Path | None) -> list[Path]:
    candidates = []
    if base.kind == "original":
        candidates.append(base.base_dir.parent / LORA_FILENAME)  # model_zoo/PusaV1/pusa_v1.pt
    candidates.append(weights_dir / LORA_DIRNAME / LORA_FILENAME)
    cached = _cached_file(LORA_REPO_ID, LORA_FILENAME, hf_cache_dir)
    if cached is not None:
        candidates.append(cached)
    return candidates


@dataclass(frozen=True)
class _RealSearch:
    base: _Candidate
    lora: WeightItem

    @property
    def complete(self) -> bool:
        return not self.base.problems and self.lora.found

    def items(self) -> tuple[WeightItem, WeightItem]:
        return WeightItem(self.base.label, self.base.base_dir, self.base.problems), self.lora

    def source(self) -> ModelSource:
        layout = "diffusers layout" if self.base.kind == "diffusers" else "original layout"
        return ModelSource(
            kind=self.base.kind,
            base_dir=self.base.base_dir,
            lora_path=self.lora.path,
            name=f"Pusa V1 on Wan2.1-T2V-14B ({layout})",
            is_small=False,
        )


def _search_real(
    weights_dir: Path, base_dir: Path | None, lora_path: Path | None, hf_cache_dir: Path | None
) -> _RealSearch:
    """The best real-model candidate: the first complete base, else the one closest to complete."""
    candidates = _base_candidates(weights_dir, base_dir, hf_cache_dir)
    base = next((c for c in candidates if not c.problems), min(candidates, key=lambda c: len(c.problems)))
    if lora_path is not None:
        lora_item = WeightItem("Pusa V1 LoRA", Path(lora_path), tuple(lora_problems(Path(lora_path))))
    else:
        loras = _lora_candidates(weights_dir, base, hf_cache_dir)
        found = next((p for p in loras if not lora_problems(p)), None)
        lora_item = WeightItem("Pusa V1 LoRA", found or loras[0], () if found else tuple(lora_problems(loras[0])))
    return _RealSearch(base, lora_item)


def _tiny_dirs(weights_dir: Path, shipped_tiny_dir: Path | None) -> list[Path]:
    dirs = [weights_dir / TINY_DIRNAME]
    if shipped_tiny_dir is not None and Path(shipped_tiny_dir).resolve() != dirs[0].resolve():
        dirs.append(Path(shipped_tiny_dir))
    return dirs


def _find_tiny(weights_dir: Path, shipped_tiny_dir: Path | None) -> tuple[ModelSource | None, WeightItem]:
    dirs = _tiny_dirs(weights_dir, shipped_tiny_dir)
    for folder in dirs:
        if not tiny_problems(folder):
            source = ModelSource("tiny", folder, folder / TINY_LORA_FILENAME, "pusa-tiny (small demo model)", True)
            return source, WeightItem("pusa-tiny small model", folder)
    present = next((d for d in dirs if d.is_dir()), dirs[0])
    return None, WeightItem("pusa-tiny small model", present, tuple(tiny_problems(present)))


def _list(problems: Iterable[str]) -> str:
    problems = list(problems)
    shown = "\n".join(f"  - {p}" for p in problems[:_LISTED_MISSING])
    if len(problems) > _LISTED_MISSING:
        shown += f"\n  - and {len(problems) - _LISTED_MISSING} more"
    return shown


def _how_to_fix(search: _RealSearch, weights_dir: Path) -> str:
    lora_only = f"hf download {LORA_REPO_ID} {LORA_FILENAME} --local-dir {shlex.quote(str(search.lora.path.parent))}"
    if search.base.kind == "original":
        if not search.base.problems:
            return f"Fetch the LoRA with: {lora_only}"
        return (
            f"Complete the original download with: hf download {ORIGINAL_BASE_REPO_ID} "
            f"--local-dir {shlex.quote(str(search.base.base_dir))}\n"
            f"or fetch the diffusers layout instead with: {fetch_command(weights_dir)}"
        )
    if not search.base.problems:
        return f"Fetch the LoRA with: {fetch_command(weights_dir)}\nor: {lora_only}"
    return f"Fetch them with: {fetch_command(weights_dir)}"


def _real_missing_message(search: _RealSearch, weights_dir: Path) -> str:
    problems = [*search.base.problems, *search.lora.problems]
    fix = _how_to_fix(search, weights_dir)
    return f"The Pusa V1 14B model is incomplete; missing or broken:\n{_list(problems)}\n{fix}"


def resolve_model_source(
    weights_dir: Path,
    base_dir: Path | None = None,
    lora_path: Path | None = None,
    model: str = "auto",
    *,
    hf_cache_dir: Path | None = None,
    shipped_tiny_dir: Path | None = SHIPPED_TINY_DIR,
) -> ModelSource:
    """Pick the model to run.

    ``auto`` runs the real 14B model when its files are complete and the small model otherwise;
    ``pusa-14b`` insists on the real model and ``pusa-tiny`` on the small one. Explicit
    ``base_dir``/``lora_path`` mean the real model, so a broken path is an error, never a silent
    switch to the small model. ``hf_cache_dir`` defaults to the HF cache (``HF_HOME``).
    """
    if model not in MODEL_CHOICES:
        raise WeightsError(f"--model: {model!r} is not a model; choose one of {', '.join(MODEL_CHOICES)}.")
    weights_dir = Path(weights_dir)
    if model == "pusa-tiny":
        if base_dir is not None or lora_path is not None:
            raise WeightsError(
                "--model pusa-tiny runs the small model; --base-dir and --lora are for the 14B model. "
                "Drop them, or use --model pusa-14b."
            )
        tiny, item = _find_tiny(weights_dir, shipped_tiny_dir)
        if tiny is None:
            raise WeightsError(f"--model pusa-tiny: the small model is not here:\n{_list(item.problems)}")
        return tiny

    search = _search_real(weights_dir, base_dir, lora_path, hf_cache_dir)
    if search.complete:
        return search.source()
    if model == "pusa-14b" or base_dir is not None or lora_path is not None:
        raise WeightsError(_real_missing_message(search, weights_dir))

    tiny, item = _find_tiny(weights_dir, shipped_tiny_dir)
    if tiny is not None:
        return tiny
    raise WeightsError(
        f"No model to run: the real 14B weights are not here and the small model {TINY_DIRNAME} is missing or "
        f"incomplete ({item.problems[0]}). It ships with the code in {SHIPPED_TINY_DIR}: restore that folder "
        f"(in a git clone: git checkout -- weights/{TINY_DIRNAME}).\n{_real_missing_message(search, weights_dir)}"
    )


def preflight(
    weights_dir: Path,
    base_dir: Path | None = None,
    lora_path: Path | None = None,
    *,
    hf_cache_dir: Path | None = None,
    shipped_tiny_dir: Path | None = SHIPPED_TINY_DIR,
) -> PreflightReport:
    """Report which weights are present and which are missing, without raising."""
    weights_dir = Path(weights_dir)
    try:
        search = _search_real(weights_dir, base_dir, lora_path, hf_cache_dir)
    except WeightsError as exc:
        summary = f"{exc} The app cannot start with this --base-dir."
        bad = WeightItem("Wan2.1-T2V-14B base", Path(base_dir or weights_dir), (str(exc),))
        return PreflightReport((), (bad,), None, summary, fetch_command(weights_dir))
    base_item, lora_item = search.items()
    tiny, tiny_item = _find_tiny(weights_dir, shipped_tiny_dir)
    items = (base_item, lora_item, tiny_item)
    found = tuple(i for i in items if i.found)
    missing = tuple(i for i in items if not i.found)
    if search.complete:
        summary = (
            f"Found the {base_item.label} at {base_item.path} and the Pusa V1 LoRA at {lora_item.path}: "
            "the app runs the real Pusa V1 14B model."
        )
        return PreflightReport(found, missing, search.source(), summary, None)

    # As resolve_model_source in auto mode: explicit paths never fall back to the small model.
    explicit = base_dir is not None or lora_path is not None
    source = None if explicit else tiny

    missing_real = [*base_item.problems, *lora_item.problems]
    if not base_item.path.exists() and lora_item.problems:
        head = f"The real Pusa V1 14B weights are not downloaded ({base_item.path} and {lora_item.path} are missing)."
    else:
        head = (
            f"The real Pusa V1 14B model is incomplete ({len(missing_real)} missing or broken, "
            f"first: {missing_real[0]})."
        )
    fix = _how_to_fix(search, weights_dir)
    if source is not None:
        runs = (
            f"The app runs the small demo model {TINY_DIRNAME} from {source.base_dir} instead: "
            "it shows how the app works, not the quality of Pusa."
        )
    elif explicit:
        runs = "The app cannot start until the paths given on the command line hold a complete model."
    else:
        runs = (
            f"The small model {TINY_DIRNAME} is not here either ({tiny_item.problems[0]}), "
            "so the app has no model to run."
        )
    summary = f"{head} {runs} {fix.replace(chr(10), ' ')}"
    return PreflightReport(found, missing, source, summary, fetch_command(weights_dir))
