"""Load the Pusa components from a diffusers folder, the original Wan2.1 folder, or the shipped small model.

The original layout (what Pusa's README downloads) is converted on load: the transformer from its
sharded safetensors with diffusers' own key converter and a config shipped here (nothing fetched),
the VAE from ``Wan2.1_VAE.pth``, the text encoder from Wan's T5 ``.pth`` (see :mod:`wan_t5`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5EncoderModel

from .adapters import CheckpointWeights, PristineWeights
from .facts import DEFAULT_ALPHA, DEFAULT_NOISE_MULTIPLIER
from .lora import load_lora
from .requests import Settings
from .text import MAX_SEQUENCE_LENGTH
from .transformer import PusaTransformer3DModel
from .wan_t5 import load_wan_t5_encoder, umt5_xxl_config
from .weights import ORIGINAL_SHARDS, ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE, ModelSource

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TRANSFORMER_14B_CONFIG = CONFIG_DIR / "wan2.1_t2v_14b_transformer.json"
VAE_CONFIG = CONFIG_DIR / "wan2.1_vae.json"


@dataclass
class PusaComponents:
    """Everything a job needs. ``defaults`` are the settings this model is meant to run at.

    ``pristine`` gives back the transformer's base weights after a LoRA merge (the checkpoint it was
    loaded from); None when it was not loaded from files (a host copy is made instead).
    """

    transformer: PusaTransformer3DModel
    vae: AutoencoderKLWan
    text_encoder: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    is_small: bool
    defaults: Settings = field(default_factory=Settings)
    noise_multiplier: float = DEFAULT_NOISE_MULTIPLIER
    max_sequence_length: int = MAX_SEQUENCE_LENGTH
    has_lora: bool = False
    pristine: PristineWeights | None = None
    example_prompts: tuple[str, ...] = ()  # prompts the model was trained to follow (the small model's captions)

    @property
    def lora_rank(self) -> int:
        """The ranks of every loaded adapter summed (0 without one), for the memory planner.

        The planner sizes one LoRA over Pusa's targets; adapters over the same layers add up by rank.
        """
        return sum(int(config.r) for config in getattr(self.transformer, "peft_config", {}).values())


def read_config(path: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}


def _empty_transformer(config: dict[str, Any]) -> PusaTransformer3DModel:
    with init_empty_weights():
        return PusaTransformer3DModel(**config)


def _load_converted(
    model: PusaTransformer3DModel, converted: dict[str, torch.Tensor], dtype: torch.dtype
) -> PusaTransformer3DModel:
    """Assign diffusers-named weights to an empty model, keeping ``_keep_in_fp32_modules`` in float32."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unexpected:
        raise ValueError(
            "transformer checkpoint does not match the Wan2.1 config: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    keep = set(model._keep_in_fp32_modules)
    cast = {k: v.to(torch.float32 if keep & set(k.split(".")) else dtype) for k, v in converted.items()}
    model.load_state_dict(cast, strict=True, assign=True)
    return model.eval()


def transformer_from_original_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any], dtype: torch.dtype = torch.bfloat16
) -> PusaTransformer3DModel:
    """Build the per-frame transformer from weights under the ORIGINAL Wan key names.

    Time embedder, modulation tables and norms stay float32, as diffusers' ``from_pretrained`` keeps them.
    """
    converted = convert_wan_transformer_to_diffusers(dict(state_dict))
    return _load_converted(_empty_transformer(config), converted, dtype)


def original_renames(keys: Iterable[str]) -> dict[str, str]:
    """Original Wan key -> diffusers key; the converter only renames, so running it on the names needs no tensors."""
    return {old: new for new, old in convert_wan_transformer_to_diffusers({k: k for k in keys}).items()}


def checkpoint_weights(source: ModelSource, dtype: torch.dtype) -> CheckpointWeights:
    """The transformer files of ``source``, read back as :func:`load_components` cast them."""
    if source.kind == "original":
        return CheckpointWeights([source.base_dir / name for name in ORIGINAL_SHARDS], dtype, original_renames)
    return CheckpointWeights(sorted((source.base_dir / "transformer").glob("*.safetensors")), dtype)


def load_original_transformer(
    folder: Path, dtype: torch.dtype = torch.bfloat16, config: dict[str, Any] | None = None
) -> PusaTransformer3DModel:
    """The transformer from the six original shards, cast tensor by tensor so host memory peaks at one model.

    ``config`` defaults to the Wan2.1-T2V-14B config shipped in ``configs/``.
    """
    model = _empty_transformer(config if config is not None else read_config(TRANSFORMER_14B_CONFIG))
    keep = set(model._keep_in_fp32_modules)
    converted = {}
    for path in (Path(folder) / name for name in ORIGINAL_SHARDS):
        with safe_open(str(path), framework="pt") as f:
            for old, new in original_renames(f.keys()).items():
                converted[new] = f.get_tensor(old).to(torch.float32 if keep & set(new.split(".")) else dtype)
    return _load_converted(model, converted, dtype)


def load_original_vae(path: Path, dtype: torch.dtype = torch.float32) -> AutoencoderKLWan:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    converted = convert_wan_vae_to_diffusers(state)
    with init_empty_weights():
        vae = AutoencoderKLWan(**read_config(VAE_CONFIG))
    vae.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True, assign=True)
    return vae.eval()


def load_original_folder(folder: Path, dtype: torch.dtype = torch.bfloat16) -> tuple[Any, ...]:
    """(transformer, vae, text encoder, tokenizer) from the original ``Wan2.1-T2V-14B`` folder."""
    folder = Path(folder)
    transformer = load_original_transformer(folder, dtype)
    vae = load_original_vae(folder / ORIGINAL_VAE)
    text_encoder = load_wan_t5_encoder(folder / ORIGINAL_T5, umt5_xxl_config(), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder / ORIGINAL_TOKENIZER)
    return transformer, vae, text_encoder, tokenizer


def load_diffusers_folder(folder: Path, dtype: torch.dtype = torch.bfloat16) -> tuple[Any, ...]:
    """(transformer, vae, text encoder, tokenizer) from a diffusers-format folder. The VAE stays float32."""
    folder = Path(folder)
    transformer = PusaTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype).eval()
    vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=torch.float32).eval()
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    return transformer, vae, text_encoder, tokenizer


def source_defaults(source: ModelSource) -> Settings:
    """The settings a model is meant to run at, readable before it loads (the page needs them at once)."""
    return _tiny_defaults(source.base_dir)[0] if source.kind == "tiny" else Settings()


def source_noise_multiplier(source: ModelSource) -> float:
    """The conditioning noise multiplier a model is meant to run at, readable before it loads."""
    extra = _tiny_defaults(source.base_dir)[1] if source.kind == "tiny" else {}
    return float(extra.get("noise_multiplier", DEFAULT_NOISE_MULTIPLIER))


def source_example_prompts(source: ModelSource) -> tuple[str, ...]:
    """The prompts a small model's ``defaults.json`` offers as examples (none for the 14B), readable before it loads."""
    return _example_prompts(_tiny_defaults(source.base_dir)[1]) if source.kind == "tiny" else ()


def _example_prompts(raw: dict[str, Any]) -> tuple[str, ...]:
    prompts = raw.get("example_prompts", [])
    return tuple(p for p in prompts if isinstance(p, str)) if isinstance(prompts, list) else ()


def _tiny_defaults(folder: Path) -> tuple[Settings, dict[str, Any]]:
    path = folder / "defaults.json"
    raw = json.loads(path.read_text()) if path.is_file() else {}
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in raw.items() if k in known}), raw


def load_components(source: ModelSource, dtype: torch.dtype = torch.bfloat16, alpha: float = DEFAULT_ALPHA) -> PusaComponents:
    """Load every component of ``source`` on the CPU (placement moves them afterwards) and attach the LoRA."""
    if source.kind == "original":
        transformer, vae, text_encoder, tokenizer = load_original_folder(source.base_dir, dtype)
        defaults, extra = Settings(), {}
    elif source.kind == "diffusers":
        transformer, vae, text_encoder, tokenizer = load_diffusers_folder(source.base_dir, dtype)
        defaults, extra = Settings(), {}
    elif source.kind == "tiny":
        # The small model is trained and run in float32: it is CPU-sized.
        dtype = torch.float32
        transformer, vae, text_encoder, tokenizer = load_diffusers_folder(source.base_dir, dtype)
        defaults, extra = _tiny_defaults(source.base_dir)
    else:
        raise ValueError(f"unknown model source kind {source.kind!r}")
    components = PusaComponents(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        name=source.name,
        is_small=source.is_small,
        defaults=defaults,
        noise_multiplier=float(extra.get("noise_multiplier", DEFAULT_NOISE_MULTIPLIER)),
        max_sequence_length=int(extra.get("max_sequence_length", MAX_SEQUENCE_LENGTH)),
        pristine=checkpoint_weights(source, dtype),
        example_prompts=_example_prompts(extra),
    )
    if source.lora_path is not None:
        load_lora(components.transformer, source.lora_path, alpha=defaults.lora_alpha if source.is_small else alpha)
        components.has_lora = True
    return components
