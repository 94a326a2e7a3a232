"""Presets (Quality / Fast), stacked LoRAs merged into the weights, attention backends and compilation.

Everything runs on tiny models: the LightX2V LoRA is stood in for by a random one in its own layout
(kohya ``lora_down``/``lora_up``/``alpha``), so the whole Fast path runs here without a download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client.exceptions import AppError
from safetensors.torch import save_file

import app as app_module
from pusa_core import download, facts
from pusa_core.adapters import (
    LIGHTX2V_ADAPTER,
    CheckpointWeights,
    LoraCatalog,
    LoraSpec,
    LoraStack,
    parse_extra_lora,
    tuner_layers,
)
from pusa_core.download import RemoteFile, RemoteRepo
from pusa_core.engine import Engine, SpeedOptions
from pusa_core.errors import PusaInputError
from pusa_core.loading import load_components
from pusa_core.lora import ADAPTER_NAME, load_lora
from pusa_core.media import read_video
from pusa_core.requests import Settings, TextToVideo, preset_settings
from pusa_core.speed import available_attention_backends, check_attention_backend
from pusa_core.tiny_models import random_kohya_lora, random_pusa_lora, random_tiny_components, tiny_transformer
from pusa_core.weights import LIGHTX2V_FILENAME, LIGHTX2V_REPO_ID, SHIPPED_TINY_DIR, find_lightx2v, resolve_model_source
from tests.support.server import SMALL, served
from ui.blocks import build_app
from ui.form import build_settings, parse_extra_loras, shared_values

ROOT = Path(__file__).resolve().parents[1]
KOHYA_ALPHA, KOHYA_RANK = 1.0, 2  # the stand-in LightX2V's delta is alpha / rank * up @ down


# --------------------------------------------------------------------------- tiny transformer with two adapters


def two_adapters(seed: int = 0) -> torch.nn.Module:
    """A tiny transformer with a Pusa LoRA and a LightX2V-layout LoRA, both large enough to matter."""
    model = tiny_transformer(seed)
    load_lora(model, random_pusa_lora(model, rank=4, seed=0, std=0.3))
    lightx2v = random_kohya_lora(model, rank=KOHYA_RANK, seed=1, std=0.3, network_alpha=KOHYA_ALPHA)
    load_lora(model, lightx2v, adapter_name=LIGHTX2V_ADAPTER)
    return model


def forward(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x, text = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 8, 32, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([[900.0, 500.0, 100.0]]), text, return_dict=False)[0]


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.get_base_layer().weight.detach().clone() for name, layer in tuner_layers(model).items()}


STACK = {ADAPTER_NAME: 1.4, LIGHTX2V_ADAPTER: facts.LIGHTX2V_WEIGHT}


def test_merged_and_unmerged_agree_to_rounding_and_merged_runs_no_lora_matmul():
    model = two_adapters()
    lora_calls = []
    for layer in tuner_layers(model).values():
        for down in layer.lora_A.values():
            down.register_forward_hook(lambda *a: lora_calls.append(1))
    LoraStack(model, LoraCatalog(), True, blocker="for comparison").apply(STACK)
    unmerged = forward(model)
    assert len(lora_calls) == 2 * 10 * 2  # two adapters on the 10 linears of each of 2 blocks
    lora_calls.clear()
    LoraStack(model, LoraCatalog(), True).apply(STACK)
    merged = forward(model)
    assert lora_calls == []
    assert torch.allclose(merged, unmerged, atol=2e-6, rtol=0)
    assert (merged - forward(tiny_transformer(0))).abs().max() > 0.1  # the LoRAs do change the output


def test_stacking_equals_the_sum_written_by_hand():
    model = two_adapters()
    pristine = base_weights(model)
    LoraStack(model, LoraCatalog(), True).apply(STACK)
    for name, layer in tuner_layers(model).items():
        a1, b1 = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
        # LightX2V's kohya alpha was folded into its up matrix at load, so undo that to write it as the file has it.
        down, up = layer.lora_A[LIGHTX2V_ADAPTER].weight, layer.lora_B[LIGHTX2V_ADAPTER].weight / (KOHYA_ALPHA / KOHYA_RANK)
        by_hand = pristine[name] + 1.4 * b1 @ a1 + 1.0 * (KOHYA_ALPHA / KOHYA_RANK) * up @ down
        torch.testing.assert_close(layer.get_base_layer().weight, by_hand, atol=1e-6, rtol=0)


def test_alpha_round_trip_is_bit_identical_where_peft_unmerge_drifts():
    model = two_adapters()
    pristine = base_weights(model)
    stack = LoraStack(model, LoraCatalog(), True)
    stack.apply(STACK)
    first_weights, first = base_weights(model), forward(model)
    stack.apply({**STACK, ADAPTER_NAME: 1.2})
    stack.apply(STACK)
    assert all(torch.equal(first_weights[n], w) for n, w in base_weights(model).items())
    assert torch.equal(forward(model), first)
    stack.apply({})  # nothing active: the pristine weights, and peft runs the base layers alone
    assert all(torch.equal(pristine[n], w) for n, w in base_weights(model).items())
    assert torch.equal(forward(model), forward(tiny_transformer(0)))

    # Why the stack restores instead of unmerging: peft's unmerge subtracts, which does not round-trip.
    model.set_adapters(list(STACK), list(STACK.values()))
    model.fuse_lora(adapter_names=list(STACK))
    model.unfuse_lora()
    assert not all(torch.equal(pristine[n], w) for n, w in base_weights(model).items())


def test_merged_weights_come_back_bit_exact_from_the_checkpoint():
    source = resolve_model_source(SHIPPED_TINY_DIR.parent, model="pusa-tiny", shipped_tiny_dir=SHIPPED_TINY_DIR)
    c = load_components(source)
    assert isinstance(c.pristine, CheckpointWeights)
    pristine = base_weights(c.transformer)
    stack = LoraStack(c.transformer, LoraCatalog(), c.has_lora, c.pristine)
    assert stack.describe() == "LoRAs merged into the weights; restored from the checkpoint (1 memory-mapped safetensors files, no copy kept)"
    stack.apply({ADAPTER_NAME: 1.4})
    assert not all(torch.equal(pristine[n], w) for n, w in base_weights(c.transformer).items())
    stack.apply({ADAPTER_NAME: 1.2})
    stack.apply({})
    assert all(torch.equal(pristine[n], w) for n, w in base_weights(c.transformer).items())


def test_a_stack_is_built_on_unmerged_weights_and_says_how_it_runs():
    model = two_adapters()
    assert LoraStack(model, LoraCatalog(), True, blocker="offloading streams the blocks from host memory").describe() == (
        "LoRAs unmerged (offloading streams the blocks from host memory)"
    )
    stack = LoraStack(model, LoraCatalog(), True)
    assert stack.describe().startswith("LoRAs merged into the weights; restored from a host copy of the LoRA'd weights (")
    stack.apply(STACK)
    with pytest.raises(RuntimeError, match="needs unmerged weights"):
        LoraStack(model, LoraCatalog(), True)


# --------------------------------------------------------------------------- engine: presets and extra LoRAs


def stand_in_lightx2v(components) -> LoraSpec:
    state = random_kohya_lora(components.transformer, rank=KOHYA_RANK, seed=5, std=0.2, network_alpha=KOHYA_ALPHA)
    return LoraSpec(LIGHTX2V_ADAPTER, state, facts.LIGHTX2V_WEIGHT)


@pytest.fixture(scope="module")
def fast_engine(tmp_path_factory):
    """A random tiny engine with a stand-in LightX2V and one extra LoRA named 'style'."""
    components = random_tiny_components()
    style = LoraSpec("style", random_pusa_lora(components.transformer, rank=2, seed=7, std=0.2), 0.5)
    catalog = LoraCatalog(stand_in_lightx2v(components), extras=(style,))
    engine = Engine.from_components(components, tmp_path_factory.mktemp("out"), speed=SpeedOptions(loras=catalog))
    assert engine.wait_ready(60).state == "ready"
    return engine


def passes(engine: Engine, settings: Settings) -> tuple[int, np.ndarray, dict]:
    """Transformer passes, frames and saved settings of one text-to-video job (5 frames of 32x32)."""
    settings = replace(settings, width=32, height=32, num_frames=5)
    calls = []
    hook = engine._components.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        result = engine.generate(TextToVideo(settings))
    finally:
        hook.remove()
    return len(calls), read_video(result.video_path)[0], result.settings


def test_fast_makes_five_times_fewer_passes_than_quality(fast_engine):
    quality = replace(fast_engine.defaults(), prompt="a red ball", seed=3, steps=facts.DEFAULT_STEPS, cfg=facts.DEFAULT_CFG)
    fast = preset_settings(quality, facts.FAST)
    assert (fast.steps, fast.cfg, fast.preset) == (facts.FAST_STEPS, facts.FAST_CFG, "fast")
    quality_passes, _, _ = passes(fast_engine, quality)
    fast_passes, _, saved = passes(fast_engine, fast)
    assert (quality_passes, fast_passes) == (20, 4)
    assert saved["settings"]["preset"] == "fast" and saved["settings"]["cfg"] == 1.0


def test_switching_preset_and_alpha_back_gives_the_same_video_bit_for_bit(fast_engine):
    fast = preset_settings(replace(fast_engine.defaults(), prompt="a red ball", seed=4, lora_alpha=1.4), facts.FAST)
    _, first, _ = passes(fast_engine, fast)
    _, quality, _ = passes(fast_engine, replace(fast, preset=facts.QUALITY, lora_alpha=1.2))
    _, again, _ = passes(fast_engine, fast)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, quality)  # without LightX2V (and at another alpha) the video changes


def test_an_extra_lora_applies_at_the_weight_a_job_gives(fast_engine):
    assert fast_engine.defaults().extra_loras == {"style": 0.5}
    base = replace(fast_engine.defaults(), prompt="a red ball", seed=5, extra_loras={})
    _, without, _ = passes(fast_engine, base)
    _, at_zero, _ = passes(fast_engine, replace(base, extra_loras={"style": 0}))
    _, with_style, saved = passes(fast_engine, replace(base, extra_loras={"style": 0.5}))
    assert np.array_equal(without, at_zero) and not np.array_equal(without, with_style)
    assert saved["settings"]["extra_loras"] == {"style": 0.5}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"preset": "turbo"}, "preset", "must be one of 'quality', 'fast', got 'turbo'"),
        ({"preset": "fast", "cfg": 5.0}, "cfg", "must be 1 with the Fast preset, got 5.0: its LightX2V LoRA is distilled "
                                                "to run without guidance; set cfg to 1, or choose the Quality preset"),
        ({"extra_loras": {"style": 9}}, "extra_loras", "'style' must be a number from -5 to 5, got 9"),
        ({"extra_loras": {"style": "much"}}, "extra_loras", "'style' must be a number from -5 to 5, got 'much'"),
        ({"extra_loras": {"anime": 1.0}}, "extra_loras", "'anime' is not loaded (loaded: style); start the app with "
                                                         "--extra-lora PATH[:WEIGHT] to add a LoRA"),
    ],
)
def test_bad_presets_and_lora_weights_are_refused_naming_the_field(fast_engine, change, field, message):
    with pytest.raises(PusaInputError) as err:
        fast_engine.generate(TextToVideo(replace(fast_engine.defaults(), prompt="a ball", **change)))
    assert (err.value.field, err.value.message) == (field, message)


def test_fast_without_lightx2v_says_how_to_fetch_it(tiny_engine):
    settings = preset_settings(replace(tiny_engine.defaults(), prompt="a ball"), facts.FAST)
    with pytest.raises(PusaInputError) as err:
        tiny_engine.generate(TextToVideo(settings))
    assert err.value.field == "preset"
    assert err.value.message == ("the Fast preset needs the LightX2V LoRA, and this engine was started without it; "
                                 "choose Quality meanwhile")
    with pytest.raises(PusaInputError, match="^--preset: the Fast preset needs the LightX2V LoRA"):
        SpeedOptions(preset=facts.FAST)


def test_catalog_and_flag_refuse_clashing_names_and_bad_weights(tmp_path):
    spec = parse_extra_lora(str(tmp_path / "My Style v2.safetensors:0.8"))
    assert (spec.name, spec.source, spec.weight) == ("My_Style_v2", tmp_path / "My Style v2.safetensors", 0.8)
    assert parse_extra_lora("C:/loras/motion.safetensors").weight == facts.DEFAULT_EXTRA_LORA_WEIGHT
    assert parse_extra_lora("C:/loras/motion.safetensors").source == Path("C:/loras/motion.safetensors")
    with pytest.raises(PusaInputError, match=r"^--extra-lora: 'x.safetensors:9': the weight must be a number from -5 to 5, got 9.0$"):
        parse_extra_lora("x.safetensors:9")
    with pytest.raises(PusaInputError, match="the name 'pusa' is taken by Pusa; rename the file"):
        LoraCatalog(extras=(parse_extra_lora("pusa.safetensors"),))
    with pytest.raises(PusaInputError, match="another extra LoRA is also named 'style'; rename one of the files"):
        LoraCatalog(extras=(parse_extra_lora("a/style.safetensors"), parse_extra_lora("b/style.pt")))


# --------------------------------------------------------------------------- app flags and page


def test_app_flags_refuse_what_cannot_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        app_module.parse_args(["--extra-lora", str(tmp_path / "gone.safetensors:0.5")])
    assert stopped.value.code == 2
    assert f"argument --extra-lora: {tmp_path / 'gone.safetensors'}: missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app_module.parse_args(["--attention-backend", "sage"])
    assert "argument --attention-backend: 'sage' cannot run here (Sage Attention" in capsys.readouterr().err
    args = app_module.parse_args(["--model", "pusa-tiny", "--weights-dir", str(tmp_path), "--preset", "fast"])
    with pytest.raises(PusaInputError) as err:  # main() exits with it before anything loads
        app_module.make_engine(args)
    assert str(err.value) == (
        "--preset: the Fast preset's LightX2V LoRA is made for the 14B model, and this small model runs "
        f"Quality only; to run Fast, fetch the 14B weights (python -m pusa_core.download --local-dir {tmp_path}) and "
        f"the LoRA (python -m pusa_core.download --lightx2v --local-dir {tmp_path}); or start with --preset quality"
    )
    args = app_module.parse_args(["--extra-lora", str(ROOT / "weights/pusa-tiny/pusa_lora.safetensors:0.3"), "--compile"])
    assert [(s.name, s.weight) for s in args.extra_lora] == [("pusa_lora", 0.3)] and args.compile


def test_the_14b_page_names_the_missing_lightx2v_and_the_command(tmp_path):
    args = app_module.parse_args(["--weights-dir", str(tmp_path)])
    catalog = app_module.lora_catalog(args, small=False)
    assert catalog.lightx2v is None
    where = tmp_path / "Wan2.2-Lightning" / LIGHTX2V_FILENAME
    assert catalog.lightx2v_missing == (
        f"the Fast preset needs the LightX2V LoRA of lightx2v/Wan2.2-Lightning, which is neither at {where} nor in "
        f"the Hugging Face cache; fetch it with: python -m pusa_core.download --lightx2v --local-dir {tmp_path}"
    )
    where.parent.mkdir(parents=True)
    save_file({"blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 4)}, str(where))
    assert find_lightx2v(tmp_path) == where
    assert app_module.lora_catalog(args, small=False).lightx2v == LoraSpec(LIGHTX2V_ADAPTER, where, 1.0)


def test_every_tab_offers_the_preset_and_fast_runs_through_the_api(fast_engine, tmp_path):
    with served(fast_engine, tmp_path) as server:
        api = server.client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        for task in ("i2v", "multiframe", "v2v", "t2v"):
            names = [p["parameter_name"] for p in api[f"/{task}"]["parameters"]]
            assert {"preset", "extra_loras"} <= set(names)
        _, settings_file, _, message = server.client.predict(
            prompt="a ball", **{**SMALL, "steps": 4}, cfg=1, preset="fast", extra_loras="style:0.25", api_name="/t2v"
        )
        assert message.startswith("Done in ")
        saved = json.loads(Path(settings_file).read_text())["settings"]
        assert (saved["preset"], saved["extra_loras"]) == ("fast", {"style": 0.25})
        with pytest.raises(AppError, match=r"^Guidance \(CFG\) must be 1 with the Fast preset, got 5"):
            server.client.predict(prompt="a ball", **SMALL, cfg=5, preset="fast", api_name="/t2v")
        with pytest.raises(AppError, match=r"^Extra LoRAs: 'style' is not name:weight; write e.g. style:0.8, motion:1"):
            server.client.predict(prompt="a ball", **SMALL, extra_loras="style", api_name="/t2v")


def test_each_tab_says_under_the_choice_when_fast_cannot_run(tiny_engine, fast_engine):
    note = "⚠️ The Fast preset needs the LightX2V LoRA, and this engine was started without it."

    def notes(engine: Engine) -> list[str]:
        config = build_app(engine).config
        return [c["props"].get("value") for c in config["components"] if c["props"].get("value") == note]

    assert len(notes(tiny_engine)) == 4 and notes(fast_engine) == []


def test_form_reads_and_writes_presets_and_extra_loras():
    assert parse_extra_loras(" style:0.8, motion : 1 ,") == {"style": 0.8, "motion": 1}
    assert parse_extra_loras("") == {} and parse_extra_loras(None) == {}
    for text, message in [
        ("style:", "'style:' is not name:weight; write e.g. style:0.8, motion:1"),
        ("style:much", "'much' is not a number"),
        ("a:1, a:2", "'a' is listed twice; give each LoRA once"),
    ]:
        with pytest.raises(PusaInputError) as err:
            parse_extra_loras(text)
        assert (err.value.field, err.value.message) == ("extra_loras", message)
    saved = {"steps": 4, "cfg": 1.0, "preset": "fast", "extra_loras": {"style": 0.5}}
    assert {k: v for k, v in shared_values(saved).items() if k in ("preset", "extra_loras")} == {
        "preset": "fast", "extra_loras": "style:0.5"}
    # Settings saved before presets existed ran Quality without extra LoRAs.
    assert shared_values({"steps": 10})["preset"] == "quality" and shared_values({"steps": 10})["extra_loras"] == ""
    values = {"prompt": "p", "negative_prompt": "", "seed": 1, "randomize_seed": False, "steps": 4, "cfg": 1,
              "lora_alpha": 1.4, "size": "832x480", "frames": 81, "fps": 16, "fit": "crop", "preset": "fast",
              "extra_loras": "style:0.5", "step_cache": "off"}
    s = build_settings(values)
    assert (s.preset, s.extra_loras, s.step_cache) == ("fast", {"style": 0.5}, "off")
    # Settings saved before step caching existed ran without it; a saved one is put back as it was.
    assert shared_values({"steps": 10})["step_cache"] == "off"
    assert shared_values({"steps": 10, "step_cache": "taylorseer:2"})["step_cache"] == "taylorseer:2"


# --------------------------------------------------------------------------- GPU options, on the CPU


def test_attention_backends_refuse_what_is_not_installed_listing_what_is():
    available = available_attention_backends()
    assert available[0] == "native" and "flash" not in available  # flash-attn is not installed here
    listed = f"available here: {', '.join(available)}"
    assert check_attention_backend("native") == "native"
    with pytest.raises(PusaInputError) as err:
        check_attention_backend("flash")
    assert err.value.field == "--attention-backend"
    assert err.value.message.startswith("'flash' cannot run here (Flash Attention backend 'flash' is not usable")
    assert err.value.message.endswith(f"Please install `flash-attn>=2.6.3`.); {listed}")
    with pytest.raises(PusaInputError, match=rf"^--attention-backend: 'fastest' is not a diffusers attention backend; {listed}$"):
        check_attention_backend("fastest")


def test_another_attention_backend_and_compile_are_applied_to_the_transformer(tmp_path):
    """``_native_math`` is torch's reference attention: same numbers as native, through the dispatcher."""
    speed = SpeedOptions(attention_backend="_native_math", compile=True)
    engine = Engine.from_components(random_tiny_components(), tmp_path, speed=speed)
    assert engine.wait_ready(60).state == "ready"
    transformer = engine._components.transformer
    backends = {b.attn1.processor._attention_backend for b in transformer.blocks}
    backends |= {b.attn2.processor._attention_backend for b in transformer.blocks}
    assert backends == {"_native_math"}
    # diffusers made _native_math the process's active backend too; a later native model must not inherit it.
    native = Engine.from_components(random_tiny_components(), tmp_path)
    assert native.wait_ready(60).state == "ready"
    assert {b.attn1.processor._attention_backend for b in native._components.transformer.blocks} == {"native"}
    # Regional compilation: each block is compiled on its own (compiling runs at the first pass).
    assert all(b._compiled_call_impl is not None for b in transformer.blocks)
    assert transformer._compiled_call_impl is None


# --------------------------------------------------------------------------- download --lightx2v (no network)


def lightx2v_repo(size: int = 1234) -> RemoteRepo:
    listed = [RemoteFile("README.md", 10), RemoteFile(LIGHTX2V_FILENAME, size),
              RemoteFile(LIGHTX2V_FILENAME.replace("low_noise", "high_noise"), size)]
    return RemoteRepo(LIGHTX2V_REPO_ID, "0123456789abcdef", download.select_files(LIGHTX2V_REPO_ID, listed))


def test_lightx2v_download_plans_the_low_noise_file_where_the_app_finds_it(tmp_path):
    repo = lightx2v_repo()
    assert [f.path for f in repo.files] == [LIGHTX2V_FILENAME]
    plan = download.plan_download([repo], local_dir=tmp_path)
    assert plan.roots == {LIGHTX2V_REPO_ID: tmp_path / "Wan2.2-Lightning"}
    assert download.describe_plan(plan, free=10**12).splitlines() == [
        f"{LIGHTX2V_REPO_ID}@0123456789ab: 1 files, 1.2 kB, 0 already complete -> {tmp_path / 'Wan2.2-Lightning'}",
        "To download: 1 files, 1.2 kB (resuming 0 B of interrupted downloads); free disk: 1000.0 GB.",
    ]
    refusal = download.disk_space_problem(download.plan_download([lightx2v_repo(600_000_000)], local_dir=tmp_path),
                                          free=500_000_000, margin=0)
    assert refusal.startswith(f"Not enough disk space for {tmp_path / 'Wan2.2-Lightning'}: the download needs 600.0 MB")
    landed = tmp_path / "Wan2.2-Lightning" / LIGHTX2V_FILENAME
    assert download.download_root(landed, LIGHTX2V_FILENAME) == tmp_path / "Wan2.2-Lightning"
    with pytest.raises(download.DownloadError, match=f"{LIGHTX2V_REPO_ID} no longer lists {LIGHTX2V_FILENAME}"):
        download.select_files(LIGHTX2V_REPO_ID, [RemoteFile("README.md", 3)])


def test_lightx2v_flag_asks_the_hub_for_that_repo_only(tmp_path):
    args = download.parse_args(["--lightx2v", "--dry-run"])
    assert args.lightx2v and args.dry_run
    with pytest.raises(SystemExit):
        download.parse_args(["--lightx2v", "--original-dir", str(tmp_path)])
    result = subprocess.run(
        [sys.executable, "-m", "pusa_core.download", "--lightx2v", "--local-dir", str(tmp_path / "w")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "3",
             "HF_HUB_DISABLE_TELEMETRY": "1"},
    )
    assert result.returncode == 1 and result.stderr.startswith("Cannot reach the Hugging Face Hub at http://127.0.0.1:9")
    assert not (tmp_path / "w").exists()
