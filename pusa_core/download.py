"""``python -m pusa_core.download``: fetch the real Pusa V1 weights with huggingface_hub.

One run: ask the Hub what the two repositories hold (network), plan what is still missing and
check the disk has room for it (pure, before any byte is written), fetch with huggingface_hub (its
tqdm bars show progress and a rerun resumes), then verify what arrived (every file present, sizes
as the Hub lists them, safetensors headers readable). Only the pure steps carry logic of our own,
so they are tested on local folders; the endpoint follows ``HF_ENDPOINT`` like all of huggingface_hub.

``--lightx2v`` fetches the Fast preset's LightX2V LoRA the same way (one file of ``lightx2v/Wan2.2-Lightning``).
``--original-dir`` instead checks an existing original-layout download (Pusa README's
``model_zoo/PusaV1``) and prints the app command that uses it.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from huggingface_hub.file_download import repo_folder_name

from pusa_core.weights import (
    BASE_REPO_ID,
    DEFAULT_WEIGHTS_DIR,
    DIFFUSERS_DIRNAME,
    LIGHTX2V_DIRNAME,
    LIGHTX2V_FILENAME,
    LIGHTX2V_REPO_ID,
    LORA_DIRNAME,
    LORA_FILENAME,
    LORA_REPO_ID,
    WeightsError,
    resolve_model_source,
    safetensors_problem,
)

# Everything diffusers loads; the repo's README, pictures and examples stay behind.
BASE_PATTERNS = ("model_index.json", "scheduler/*", "transformer/*", "vae/*", "text_encoder/*", "tokenizer/*")
# Room left over after the download, so the machine does not end up with a full disk.
SPACE_MARGIN_BYTES = 2 * 1024**3
# What one run fetches: the model (the base and Pusa's LoRA), or with --lightx2v the Fast preset's LoRA.
MODEL_REPOS = (BASE_REPO_ID, LORA_REPO_ID)
LIGHTX2V_REPOS = (LIGHTX2V_REPO_ID,)
# Repositories of which only one file is wanted, and the folder under --local-dir each repo lands in.
SINGLE_FILES = {LORA_REPO_ID: LORA_FILENAME, LIGHTX2V_REPO_ID: LIGHTX2V_FILENAME}
DIRNAMES = {BASE_REPO_ID: DIFFUSERS_DIRNAME, LORA_REPO_ID: LORA_DIRNAME, LIGHTX2V_REPO_ID: LIGHTX2V_DIRNAME}


class DownloadError(RuntimeError):
    """A step of the download failed; the message says what to do."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


@dataclass(frozen=True)
class RemoteRepo:
    """The files we want from one Hub repository, at one commit."""

    repo_id: str
    revision: str
    files: tuple[RemoteFile, ...]


@dataclass(frozen=True)
class DownloadPlan:
    """What lands where, what is already there, and how many bytes are still to come."""

    repos: tuple[RemoteRepo, ...]
    roots: Mapping[str, Path]  # repo_id -> the folder its files land in
    present: frozenset[tuple[str, str]]  # (repo_id, path) of files already complete
    damaged: frozenset[tuple[str, str]]  # on disk but of the wrong size or unreadable: fetched again
    partial_bytes: int  # bytes of interrupted downloads that huggingface_hub will resume

    def files(self) -> Iterable[tuple[RemoteRepo, RemoteFile]]:
        for repo in self.repos:
            for file in repo.files:
                yield repo, file

    @property
    def total_bytes(self) -> int:
        return sum(f.size for _, f in self.files())

    @property
    def present_bytes(self) -> int:
        return sum(f.size for r, f in self.files() if (r.repo_id, f.path) in self.present)

    @property
    def needed_bytes(self) -> int:
        return max(0, self.total_bytes - self.present_bytes - self.partial_bytes)

    @property
    def to_fetch(self) -> int:
        return sum(1 for r, f in self.files() if (r.repo_id, f.path) not in self.present)


def format_size(n: int) -> str:
    """Decimal units, as disks and the Hub count them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def select_files(repo_id: str, files: Iterable[RemoteFile]) -> tuple[RemoteFile, ...]:
    """Keep what the app needs: the diffusers components of the base, one LoRA file of a LoRA repo."""
    if repo_id in SINGLE_FILES:
        wanted = SINGLE_FILES[repo_id]
        chosen = tuple(f for f in files if f.path == wanted)
        if not chosen:
            raise DownloadError(f"{repo_id} no longer lists {wanted}; the LoRA cannot be fetched.")
        return chosen
    return tuple(f for f in files if any(fnmatch.fnmatch(f.path, p) for p in BASE_PATTERNS))


def fetch_manifest(api: HfApi, timeout: float, repo_ids: Iterable[str] = MODEL_REPOS) -> tuple[RemoteRepo, ...]:
    """Ask the Hub for the file lists and sizes of ``repo_ids`` (the first network step)."""
    repos = []
    for repo_id in repo_ids:
        info = api.model_info(repo_id, files_metadata=True, timeout=timeout)
        sizes = {s.rfilename: s.size for s in info.siblings or ()}
        wanted = select_files(repo_id, [RemoteFile(name, size or 0) for name, size in sizes.items()])
        unsized = [f.path for f in wanted if sizes[f.path] is None]
        if unsized:
            raise DownloadError(
                f"The Hub at {hf_constants.ENDPOINT} listed no size for {repo_id}/{unsized[0]}, so the disk "
                "space cannot be checked. Is HF_ENDPOINT a Hugging Face Hub?"
            )
        repos.append(RemoteRepo(repo_id, info.sha or "main", wanted))
    return tuple(repos)


def repo_roots(repos: Iterable[RemoteRepo], local_dir: Path | None, cache_dir: Path | None) -> dict[str, Path]:
    """Where each repository's files land: ``local_dir`` subfolders, or the cache snapshot folder."""
    roots = {}
    for repo in repos:
        if local_dir is not None:
            roots[repo.repo_id] = local_dir / DIRNAMES[repo.repo_id]
        elif cache_dir is not None:
            folder = cache_dir / repo_folder_name(repo_id=repo.repo_id, repo_type="model")
            roots[repo.repo_id] = folder / "snapshots" / repo.revision
        else:
            raise ValueError("repo_roots needs local_dir or cache_dir")
    return roots


def _partial_bytes(roots: Mapping[str, Path], cache_dir: Path | None) -> int:
    """Bytes huggingface_hub already holds in ``*.incomplete`` files, which it resumes."""
    if cache_dir is not None:
        places = [root.parent.parent / "blobs" for root in roots.values()]
    else:
        places = [root / ".cache" / "huggingface" / "download" for root in roots.values()]
    return sum(p.stat().st_size for place in places if place.is_dir() for p in place.rglob("*.incomplete"))


def file_problem(dest: Path, size: int) -> str | None:
    """Why ``dest`` is not the Hub's file of ``size`` bytes, or None when it is."""
    if not dest.is_file():
        return "missing"
    actual = dest.stat().st_size
    if actual != size:
        return f"{actual} bytes, the Hub lists {size}"
    if dest.suffix == ".safetensors":
        return safetensors_problem(dest)
    return None


def plan_download(
    repos: Iterable[RemoteRepo], local_dir: Path | None = None, cache_dir: Path | None = None
) -> DownloadPlan:
    """Compare the Hub's file list with the target folder; touches only the local disk."""
    if (local_dir is None) == (cache_dir is None):
        raise ValueError("plan_download needs exactly one of local_dir or cache_dir")
    repos = tuple(repos)
    roots = repo_roots(repos, local_dir, cache_dir)
    present, damaged = set(), set()
    for repo in repos:
        for file in repo.files:
            dest = roots[repo.repo_id] / file.path
            problem = file_problem(dest, file.size)
            if problem is None:
                present.add((repo.repo_id, file.path))
            elif problem != "missing":
                damaged.add((repo.repo_id, file.path))
    return DownloadPlan(repos, roots, frozenset(present), frozenset(damaged), _partial_bytes(roots, cache_dir))


def remove_damaged(plan: DownloadPlan) -> list[Path]:
    """Delete damaged files so huggingface_hub fetches them again.

    huggingface_hub trusts a finished file whose metadata it recorded, whatever its size now;
    in the cache the snapshot entry is a link to a blob, and both must go.
    """
    removed = []
    for repo_id, path in sorted(plan.damaged):
        dest = plan.roots[repo_id] / path
        dest.resolve().unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
        removed.append(dest)
    return removed


def free_bytes(path: Path) -> int:
    """Free space on the disk that will hold ``path`` (which need not exist yet)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def disk_space_problem(plan: DownloadPlan, free: int, margin: int = SPACE_MARGIN_BYTES) -> str | None:
    """A refusal with the numbers when the rest of the download does not fit, else None."""
    if plan.needed_bytes + margin <= free:
        return None
    where = ", ".join(str(r) for r in plan.roots.values())
    short = plan.needed_bytes + margin - free
    return (
        f"Not enough disk space for {where}: the download needs {format_size(plan.needed_bytes)} more "
        f"({format_size(plan.total_bytes)} in all, {format_size(plan.present_bytes + plan.partial_bytes)} "
        f"already here) plus {format_size(margin)} to spare, and the disk has {format_size(free)} free. "
        f"Free {format_size(short)} or choose another folder with --local-dir."
    )


def verify(repos: Iterable[RemoteRepo], roots: Mapping[str, Path]) -> list[str]:
    """Everything that did not arrive intact: missing files, wrong sizes, unreadable safetensors."""
    problems = []
    for repo in repos:
        for file in repo.files:
            dest = roots[repo.repo_id] / file.path
            if problem := file_problem(dest, file.size):
                problems.append(f"{dest}: {problem}")
    return problems


def describe_plan(plan: DownloadPlan, free: int) -> str:
    lines = []
    for repo in plan.repos:
        root = plan.roots[repo.repo_id]
        size = sum(f.size for f in repo.files)
        done = sum(1 for f in repo.files if (repo.repo_id, f.path) in plan.present)
        lines.append(
            f"{repo.repo_id}@{repo.revision[:12]}: {len(repo.files)} files, {format_size(size)}, "
            f"{done} already complete -> {root}"
        )
    lines.append(
        f"To download: {plan.to_fetch} files, {format_size(plan.needed_bytes)} "
        f"(resuming {format_size(plan.partial_bytes)} of interrupted downloads); free disk: {format_size(free)}."
    )
    return "\n".join(lines)


def download_root(path: Path, filename: str) -> Path:
    """The folder a repo landed in, from where its file ``filename`` (maybe in a subfolder, as LightX2V's) landed."""
    return path.parents[len(Path(filename).parts) - 1]


def fetch(repos: Iterable[RemoteRepo], local_dir: Path | None, cache_dir: Path | None) -> dict[str, Path]:
    """Download with huggingface_hub; returns where each repo landed.

    A local folder gets the planned commit. The cache gets the branch by name, because only then
    does huggingface_hub record the ``main`` ref through which the app finds cached weights.
    """
    roots = {}
    for repo in repos:
        target = None if local_dir is None else repo_roots([repo], local_dir, None)[repo.repo_id]
        revision = repo.revision if local_dir is not None else None
        if repo.repo_id in SINGLE_FILES:
            filename = SINGLE_FILES[repo.repo_id]
            path = hf_hub_download(repo.repo_id, filename, revision=revision, local_dir=target, cache_dir=cache_dir)
            roots[repo.repo_id] = download_root(Path(path), filename)
        else:
            path = snapshot_download(
                repo.repo_id,
                revision=revision,
                allow_patterns=list(BASE_PATTERNS),
                local_dir=target,
                cache_dir=cache_dir,
            )
            roots[repo.repo_id] = Path(path)
    return roots


def app_command(local_dir: Path | None) -> str:
    if local_dir is None or local_dir == DEFAULT_WEIGHTS_DIR:
        return "python app.py"
    return f"python app.py --weights-dir {shlex.quote(str(local_dir))}"


def use_original(original_dir: Path, weights_dir: Path) -> int:
    """Validate an original-layout download and print the app command that runs it."""
    try:
        source = resolve_model_source(weights_dir, base_dir=original_dir, model="pusa-14b", shipped_tiny_dir=None)
    except WeightsError as exc:
        print(f"--original-dir {original_dir}: {exc}", file=sys.stderr)
        return 1
    assert source.lora_path is not None
    print(f"Complete {source.name} found:\n  base: {source.base_dir}\n  LoRA: {source.lora_path}")
    print("Start the app on it with:")
    print(
        f"  python app.py --base-dir {shlex.quote(str(source.base_dir.absolute()))} "
        f"--lora {shlex.quote(str(source.lora_path.absolute()))}"
    )
    return 0


def _network_message(exc: BaseException) -> str:
    return (
        f"Cannot reach the Hugging Face Hub at {hf_constants.ENDPOINT} ({type(exc).__name__}: {exc}). "
        "Check the network connection (or the HF_ENDPOINT variable) and run the same command again: "
        "files already downloaded are kept and interrupted ones resume."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pusa_core.download",
        description=f"Fetch {BASE_REPO_ID} and {LORA_FILENAME} from {LORA_REPO_ID} for Pusa Studio "
        "(with --lightx2v: the Fast preset's LoRA).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--local-dir",
        type=Path,
        default=Path(os.environ.get("PUSA_WEIGHTS_DIR", DEFAULT_WEIGHTS_DIR)),
        help="weights folder to fill (default: $PUSA_WEIGHTS_DIR or ./weights)",
    )
    where.add_argument("--cache", action="store_true", help="download into the Hugging Face cache (HF_HOME) instead")
    where.add_argument(
        "--original-dir",
        type=Path,
        help="check an existing original-layout download (model_zoo/PusaV1) and print the app command for it",
    )
    parser.add_argument(
        "--lightx2v", action="store_true",
        help=f"fetch only the Fast preset's LightX2V LoRA ({LIGHTX2V_FILENAME} from {LIGHTX2V_REPO_ID})",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the plan and the disk check, download nothing")
    args = parser.parse_args(argv)
    if args.lightx2v and args.original_dir is not None:
        parser.error("--lightx2v fetches a file; --original-dir only checks a download: give one of them")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.original_dir is not None:
        return use_original(args.original_dir, args.local_dir)
    local_dir = None if args.cache else args.local_dir
    cache_dir = Path(hf_constants.HF_HUB_CACHE) if args.cache else None

    try:
        repo_ids = LIGHTX2V_REPOS if args.lightx2v else MODEL_REPOS
        repos = fetch_manifest(HfApi(), timeout=hf_constants.HF_HUB_ETAG_TIMEOUT, repo_ids=repo_ids)
        plan = plan_download(repos, local_dir, cache_dir)
        free = free_bytes(next(iter(plan.roots.values())))
        print(describe_plan(plan, free))
        refusal = disk_space_problem(plan, free)
        if refusal:
            print(refusal, file=sys.stderr)
            return 1
        if args.dry_run:
            print("Dry run: nothing downloaded.")
            return 0
        for path in remove_damaged(plan):
            print(f"Fetching again (wrong size or unreadable): {path}")
        roots = fetch(repos, local_dir, cache_dir)
    except HfHubHTTPError as exc:
        print(f"The Hub at {hf_constants.ENDPOINT} answered with an error: {exc}", file=sys.stderr)
        return 1
    except (httpx2.HTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        print(_network_message(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"The download stopped: {exc}. Fix that and run the same command again to resume.", file=sys.stderr)
        return 1
    except DownloadError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command again to resume.", file=sys.stderr)
        return 130

    problems = verify(repos, roots)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        print(
            f"The download did not arrive intact:\n{listed}\nRun the same command again to repair it.", file=sys.stderr
        )
        return 1
    count = sum(len(r.files) for r in repos)
    print(f"Verified {count} files. Start the app with: {app_command(local_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
