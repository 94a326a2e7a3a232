"""The download tool: planned, disk-checked and verified, run against a fake Hub on 127.0.0.1 that
serves local folders laid out like the real repos."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pusa_core import download
from pusa_core.download import RemoteFile, RemoteRepo
from pusa_core.weights import BASE_REPO_ID, LORA_REPO_ID, resolve_model_source
from tests.support.hub import HUB_SHA, FakeHub, copy_arrived, fake_hub
from tests.support.processes import ROOT, free_port, python_env
from tests.support.weights import make_lora, make_original, text_file


@pytest.fixture
def serve_hub() -> Iterator[Callable[..., FakeHub]]:
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


def run_download(endpoint: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m pusa_core.download ARGS`` against the Hub at ``endpoint``, with ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "pusa_core.download", *args],
        cwd=ROOT,
        env=python_env(HF_ENDPOINT=endpoint, HF_HUB_ETAG_TIMEOUT="3", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_network_the_download_fails_fast_with_a_message(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # closed: nothing listens there
    result = run_download(endpoint, "--local-dir", str(tmp_path / "w"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Cannot reach the Hugging Face Hub at {endpoint} (ConnectError")
    assert "run the same command again" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


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
    result = run_download(hub.endpoint, "--cache", HF_HOME=str(env_home))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "Verified 12 files. Start the app with: python app.py"
    source = resolve_model_source(tmp_path / "empty", hf_cache_dir=env_home / "hub", shipped_tiny_dir=None)
    snapshots = env_home / "hub" / "models--Wan-AI--Wan2.1-T2V-14B-Diffusers" / "snapshots"
    assert (source.kind, source.base_dir) == ("diffusers", snapshots / HUB_SHA)
