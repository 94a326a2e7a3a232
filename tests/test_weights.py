"""Weight discovery and preflight: which model runs (real 14B, original layout, HF cache, small model)
and what the messages say when files are missing or broken."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pusa_core.weights import (
    BASE_REPO_ID,
    LORA_REPO_ID,
    SHIPPED_TINY_DIR,
    ModelSource,
    WeightsError,
    preflight,
    resolve_model_source,
)
from tests.support.weights import make_diffusers, make_lora, make_original, make_tiny, text_file


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


def test_without_any_model_auto_names_what_the_small_model_lacks_and_both_fixes(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    with pytest.raises(WeightsError) as err:
        resolve(weights, tmp_path)
    message = str(err.value)
    assert message.startswith(
        "No model to run: the real 14B weights are not here and the small model pusa-tiny is missing or "
        f"incomplete ({weights / 'pusa-tiny'}: folder missing). It ships with the code in {SHIPPED_TINY_DIR}: "
        "restore that folder (in a git clone: git checkout -- weights/pusa-tiny).\n"
    )
    assert message.rstrip().endswith(f"Fetch them with: python -m pusa_core.download --local-dir {weights}")

    shipped = make_tiny(tmp_path / "repo" / "weights" / "pusa-tiny")
    (shipped / "pusa_lora.safetensors").unlink()  # a damaged checkout: the error names the shipped folder's gap
    with pytest.raises(WeightsError, match=re.escape(f"({shipped / 'pusa_lora.safetensors'}: missing)")):
        resolve_model_source(weights, hf_cache_dir=tmp_path / "c", shipped_tiny_dir=shipped)


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
