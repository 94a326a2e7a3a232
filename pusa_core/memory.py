"""The memory planner: predict what a Pusa job needs on each device before it runs.

Weights are exact: the models are built on the meta device (no memory, no download) with the
dtypes a real load gives them, and their parameter and buffer sizes are summed. Activations are
a simple, conservative model of the largest tensors alive at once; every coefficient below says
where it comes from. A plan that does not fit is refused with suggestions instead of running into
an out-of-memory error.

A job runs in three stages, never at the same time: text encoding, denoising, VAE decoding. A
device's peak is therefore what stays resident on it plus the largest stage working set.

The ``cpu`` placement is budgeted against the RAM available when the plan is made (less a reserve
for the system), like GPUs against their free memory: a job that would exhaust the RAM swaps or
freezes the machine instead of raising an error, so it is refused before it starts.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import psutil
import torch
from accelerate import infer_auto_device_map
from accelerate.utils import get_balanced_memory
from diffusers import AutoencoderKLWan
from peft import LoraConfig, inject_adapter_in_model

from .errors import PusaInputError
from .facts import PUSA_LORA_RANK
from .transformer import PusaTransformer3DModel

GIB = 1024**3
CONFIG_DIR = Path(__file__).with_name("configs")
WAN_14B_TRANSFORMER_CONFIG = CONFIG_DIR / "wan2.1_t2v_14b_transformer.json"
WAN_VAE_CONFIG = CONFIG_DIR / "wan2.1_vae.json"

# Pusa's LoRA sits on q, k, v, o of self and cross attention and on both FFN linears of every
# block (Wan names self_attn/cross_attn q,k,v,o and ffn.0/ffn.2; these are diffusers' names).
LORA_TARGETS = r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)"

# Wan2.1's umT5-XXL encoder (vocab 256384, d_model 4096, 24 layers, d_ff 10240, 64 heads) as
# transformers' UMT5EncoderModel builds it on the meta device; the token embedding is its largest layer.
UMT5_XXL_PARAMS = 5_680_910_336
UMT5_XXL_EMBEDDING_PARAMS = 256_384 * 4096
TEXT_TOKENS = 512
# 512 tokens through umT5-XXL: hidden states, the 64-head 512x512 position bias and scores, the
# gated FFN; about 0.2 GiB in bf16, allowed 0.5.
TEXT_ENCODE_ACTIVATIONS = GIB // 2

WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn, "fp32": torch.float32}
VAE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

# A GPU is never planned to the last byte: the CUDA context, cuBLAS workspaces and kernels take
# about a GiB, and the caching allocator loses some memory to fragmentation.
CUDA_CONTEXT_BYTES = GIB
FRAGMENTATION_HEADROOM = 0.10
# Host RAM is planned with a reserve too: the OS, the app itself (Python, Gradio, torch's CPU
# allocator caches) and other programs need room. A tenth of the RAM, at least 2 GiB.
HOST_RESERVE_FRACTION = 0.10
HOST_RESERVE_MIN_BYTES = 2 * GIB

# Transformer block working set, bytes per element of a [tokens, hidden] tensor with bf16
# compute (PusaTransformerBlock + diffusers' WanAttnProcessor, SDPA without a tokens x tokens
# matrix). Attention stage: residual and modulated input (2 + 2), fp32 norm and modulation
# temporaries (4 + 4), q, k, v and their normed / rotated copies (6 + 4), attention output (2).
# FFN stage: residual, input and output (6), fp32 gating temporaries (12), plus 4 bytes per
# [tokens, ffn_dim] element (hidden and GELU output). Measured with a live-tensor tracker on CPU
# (torch 2.13, flash SDPA): 26 bytes per element for Wan's ffn/hidden ratio 2.7; this gives 28.8.
ATTENTION_STAGE_BYTES = 24
FFN_STAGE_BYTES = 18
FFN_HIDDEN_BYTES = 4
# Cross attention over the 512 text tokens (k, v, their normed copies, fp32 norm temporaries):
# bytes per element of a [text tokens, hidden] tensor. Measured: 2 MB at hidden 256 (12 bytes).
CROSS_ATTENTION_TEXT_BYTES = 16
# Hidden states between blocks, twice: an accelerate hook copies them to the next block's device.
STREAM_BYTES = 4
# The sampler's fp32 latent-sized tensors: latents, noise, conditioning, two velocities, guided
# velocity, next latents and one spare.
SAMPLER_LATENT_COPIES = 8

# Wan VAE decode working set per output pixel per decoder base channel: the causal-conv feature
# caches of every resolution level plus the full-resolution stage of one 4-frame chunk. Measured
# 48 elements on diffusers 0.42.1 (AutoencoderKLWan, fp32, CPU live-tensor tracker); 56 is used.
# Encoding conditioning frames needs less (measured 32).
VAE_ELEMENTS_PER_PIXEL_CHANNEL = 56
# Decoded frames are concatenated chunk by chunk and clamped (three video-sized tensors); a tiled
# decode also keeps every tile's output for blending (four).
VAE_VIDEO_COPIES = 3
VAE_TILED_VIDEO_COPIES = 4
# With fp8 storage each linear is upcast to bf16 for its forward: one largest linear in bf16.
FP8_UPCAST_LAYERS = 1
# Group offloading keeps the running block, the prefetched next one and the one being released.
OFFLOAD_RESIDENT_BLOCKS = 3
STREAMED_TEXT_LAYERS = 2


def _init_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    # PusaTransformer3DModel takes ``**kwargs``, so diffusers' ``from_config`` cannot see which
    # keys it accepts; the model is built from the keyword arguments directly.
    return {k: v for k, v in config.items() if not k.startswith("_")}


@dataclass(frozen=True)
class JobSize:
    """The size of one generation: pixels and frames. Pos/neg CFG run as two batch-1 passes."""

    width: int
    height: int
    frames: int

    def __post_init__(self) -> None:
        for name, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or value < 16 or value % 16:
                raise PusaInputError(name, f"{value!r} must be a positive multiple of 16 (e.g. 1280x720, 832x480)")
        if not isinstance(self.frames, int) or self.frames < 1 or (self.frames - 1) % 4:
            raise PusaInputError("frames", f"{self.frames!r} must be 4k+1 (1, 5, ..., 81)")

    @classmethod
    def parse(cls, size: str, frames: int) -> JobSize:
        """``"1280x720"`` and a frame count."""
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
        if not match:
            raise PusaInputError("size", f"{size!r} must be WIDTHxHEIGHT, e.g. 1280x720")
        return cls(int(match.group(1)), int(match.group(2)), frames)

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // 4 + 1

    @property
    def tokens(self) -> int:
        """Transformer tokens: latent frames x (H/8/2) x (W/8/2)."""
        return self.latent_frames * (self.height // 16) * (self.width // 16)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}, {self.frames} frames"


@dataclass(frozen=True)
class Gpu:
    """A GPU as the planner sees it: ``free`` is what this process can still allocate."""

    index: int
    name: str
    total: int
    free: int

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"

    @property
    def budget(self) -> int:
        """Bytes the planner may use: free memory less the CUDA context, less fragmentation headroom."""
        return max(0, int((self.free - CUDA_CONTEXT_BYTES) * (1 - FRAGMENTATION_HEADROOM)))


@dataclass(frozen=True)
class Host:
    """The machine's RAM as the planner sees it: ``available`` is what the OS can still hand out.

    ``holds_weights``: the planned weights are already loaded in this process (a placement that was
    applied), so ``available`` has already paid for them and the plan may count them back in.
    """

    name: str
    total: int
    available: int
    holds_weights: bool = False

    @property
    def reserve(self) -> int:
        """Bytes kept for the system and the app."""
        return max(HOST_RESERVE_MIN_BYTES, int(self.total * HOST_RESERVE_FRACTION))

    @property
    def budget(self) -> int:
        """Bytes a job may add: available RAM less the reserve."""
        return max(0, self.available - self.reserve)


def detect_host(holds_weights: bool = False) -> Host:
    """This machine's RAM now (psutil reads ``MemAvailable``: free memory plus reclaimable caches)."""
    memory = psutil.virtual_memory()
    return Host("host RAM", memory.total, memory.available, holds_weights)


@dataclass(frozen=True)
class PlanOptions:
    """What is loaded: weight storage, LoRA rank (0: none or fused), text encoder and VAE sizes."""

    weights: str = "bf16"
    lora_rank: int = PUSA_LORA_RANK
    vae_dtype: str = "fp32"
    transformer_config: str | Mapping[str, Any] = WAN_14B_TRANSFORMER_CONFIG.read_text()
    vae_config: str | Mapping[str, Any] = WAN_VAE_CONFIG.read_text()
    text_encoder_params: int = UMT5_XXL_PARAMS
    text_encoder_largest_layer: int = UMT5_XXL_EMBEDDING_PARAMS

    def __post_init__(self) -> None:
        # Configs are kept as JSON text so options stay hashable (the meta models are cached per options).
        for name in ("transformer_config", "vae_config"):
            value = getattr(self, name)
            if not isinstance(value, str):
                object.__setattr__(self, name, json.dumps(dict(value), sort_keys=True))
        if self.weights not in WEIGHT_DTYPES:
            raise PusaInputError("weights", f"{self.weights!r} is not one of {', '.join(WEIGHT_DTYPES)}")
        if self.vae_dtype not in VAE_DTYPES:
            raise PusaInputError("vae_dtype", f"{self.vae_dtype!r} is not one of {', '.join(VAE_DTYPES)}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise PusaInputError("lora_rank", f"{self.lora_rank!r} must be 0 (no LoRA) or a positive rank like 512")

    @classmethod
    def with_text_encoder_config(cls, text_encoder_config: Any, **kwargs: Any) -> PlanOptions:
        """Options whose text-encoder sizes come from a transformers ``UMT5Config`` (meta device)."""
        from transformers import UMT5EncoderModel

        with torch.device("meta"):
            encoder = UMT5EncoderModel(text_encoder_config)
        params = sum(p.numel() for p in encoder.parameters())
        largest = max(p.numel() for p in encoder.parameters())
        return cls(text_encoder_params=params, text_encoder_largest_layer=largest, **kwargs)

    @property
    def compute_bytes(self) -> int:
        """Activation element size: bf16 on GPUs, fp32 when the weights are fp32 (CPU)."""
        return 4 if self.weights == "fp32" else 2


def build_meta_transformer(config: Mapping[str, Any], weights: str = "bf16", lora_rank: int = PUSA_LORA_RANK) -> PusaTransformer3DModel:
    """The transformer on the meta device with the dtypes a real load gives it.

    ``from_pretrained(torch_dtype=bf16)`` keeps the model's ``_keep_in_fp32_modules`` in fp32;
    fp8 storage is diffusers' layerwise casting, applied the same way the placement applies it;
    the LoRA is a peft adapter stored in bf16 next to the base weights (unfused).
    """
    with torch.device("meta"):
        model = PusaTransformer3DModel(**_init_kwargs(config))
    keep = set(model._keep_in_fp32_modules or ())
    dtype = torch.float32 if weights == "fp32" else torch.bfloat16
    for name, param in model.named_parameters():
        if not keep.intersection(name.split(".")):
            param.data = param.data.to(dtype)
    if weights == "fp8":
        enable_fp8_storage(model)
    if lora_rank:
        lora = LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGETS)
        with torch.device("meta"):
            inject_adapter_in_model(lora, model, low_cpu_mem_usage=True)
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(dtype)
    return model


def enable_fp8_storage(transformer: torch.nn.Module) -> None:
    """Store the transformer's linear weights in fp8 and compute in bf16 (diffusers layerwise casting).

    diffusers' default patterns skip embeddings, norms, modulation tables and peft LoRA layers.
    """
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)


def module_bytes(module: torch.nn.Module, lora: bool | None = None) -> int:
    """Parameter and buffer bytes of a module; ``lora`` True/False keeps only / drops LoRA tensors."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    if lora is not None:
        named = [(n, t) for n, t in named if ("lora_" in n) == lora]
    return sum(t.numel() * t.element_size() for _, t in named)


@dataclass(frozen=True)
class ComponentSizes:
    """Exact weight bytes of everything a job loads."""

    transformer: int  # base weights and buffers, without LoRA
    lora: int
    non_block: int  # patch embedding, condition embedder, output head (with their LoRA: none)
    block: int  # the largest block, LoRA included
    block_lora: int
    largest_fp8_linear_params: int  # 0 without fp8 storage
    num_blocks: int
    text_encoder: int
    text_encoder_largest_layer: int
    vae: int


@dataclass
class MetaModels:
    """The meta-device transformer and the sizes of every component for one set of options."""

    transformer: PusaTransformer3DModel
    sizes: ComponentSizes
    vae_base_dim: int
    vae_tile: tuple[int, int]


@functools.lru_cache(maxsize=4)
def _cached_models(transformer_config: str, weights: str, lora_rank: int, vae_config: str, vae_dtype: str,
                   text_params: int, text_largest: int) -> MetaModels:
    model = build_meta_transformer(json.loads(transformer_config), weights, lora_rank)
    with torch.device("meta"):
        vae = AutoencoderKLWan(**_init_kwargs(json.loads(vae_config)))
    blocks = list(model.blocks)
    text_bytes = 4 if weights == "fp32" else 2
    sizes = ComponentSizes(
        transformer=module_bytes(model, lora=False),
        lora=module_bytes(model, lora=True),
        non_block=module_bytes(model) - sum(module_bytes(b) for b in blocks),
        block=max(module_bytes(b) for b in blocks),
        block_lora=max(module_bytes(b, lora=True) for b in blocks),
        largest_fp8_linear_params=max((m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
                                       and m.weight.dtype == torch.float8_e4m3fn), default=0),
        num_blocks=len(blocks),
        text_encoder=text_params * text_bytes,
        text_encoder_largest_layer=text_largest * text_bytes,
        vae=sum(t.numel() for t in (*vae.parameters(), *vae.buffers())) * VAE_DTYPES[vae_dtype].itemsize,
    )
    base_dim = vae.config.decoder_base_dim or vae.config.base_dim
    return MetaModels(model, sizes, base_dim, (vae.tile_sample_min_height, vae.tile_sample_min_width))


def meta_models(options: PlanOptions) -> MetaModels:
    """Build (once per options) the meta-device models the planner measures."""
    return _cached_models(options.transformer_config, options.weights, options.lora_rank, options.vae_config,
                          options.vae_dtype, options.text_encoder_params, options.text_encoder_largest_layer)


@dataclass(frozen=True)
class Activations:
    """Working-set bytes of each stage for one job (see the coefficients at the top of the module)."""

    modulation: int  # per-frame modulation [B, F, 6, D] and time embedding [B, F, D], fp32
    stream: int  # hidden states (twice), rotary tables, text states
    block: int  # one block's largest working set
    fp8_upcast: int  # one linear upcast from fp8 storage
    sampler: int  # fp32 latent-sized tensors of the sampler
    text_encode: int
    vae_decode: int
    vae_decode_tiled: int

    @property
    def transformer(self) -> int:
        return self.modulation + self.stream + self.block + self.fp8_upcast


def estimate_activations(job: JobSize, options: PlanOptions, models: MetaModels) -> Activations:
    """The conservative activation model for ``job``."""
    cfg = models.transformer.config
    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    dim, ffn, text_dim = heads * head_dim, cfg["ffn_dim"], cfg["text_dim"]
    tokens, frames = job.tokens, job.latent_frames
    scale = options.compute_bytes / 2  # the coefficients are for bf16 compute
    block = max(ATTENTION_STAGE_BYTES * tokens * dim, FFN_STAGE_BYTES * tokens * dim + FFN_HIDDEN_BYTES * tokens * ffn)
    block += CROSS_ATTENTION_TEXT_BYTES * TEXT_TOKENS * dim
    stream = STREAM_BYTES * tokens * dim + 2 * 4 * tokens * head_dim + 2 * TEXT_TOKENS * (text_dim + dim)
    latent_elems = cfg["in_channels"] * frames * (job.height // 8) * (job.width // 8)
    vae_bytes = VAE_DTYPES[options.vae_dtype].itemsize
    video = 3 * job.frames * job.width * job.height * vae_bytes
    per_pixel = VAE_ELEMENTS_PER_PIXEL_CHANNEL * models.vae_base_dim * vae_bytes
    tile_h, tile_w = models.vae_tile
    tile_pixels = min(tile_h, job.height) * min(tile_w, job.width)
    return Activations(
        modulation=frames * 7 * dim * 4,
        stream=int(stream * scale),
        block=int(block * scale),
        fp8_upcast=FP8_UPCAST_LAYERS * models.sizes.largest_fp8_linear_params * 2,
        sampler=SAMPLER_LATENT_COPIES * latent_elems * 4,
        text_encode=int(TEXT_ENCODE_ACTIVATIONS * scale),
        vae_decode=per_pixel * job.width * job.height + VAE_VIDEO_COPIES * video,
        vae_decode_tiled=per_pixel * tile_pixels + VAE_TILED_VIDEO_COPIES * video,
    )


@dataclass
class DeviceLoad:
    """What one device holds (weights) and needs on top in each stage (activations)."""

    device: str
    name: str
    budget: int | None  # None: host memory holding offloaded weights, reported but not checked
    weights: dict[str, int] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)
    blocks: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def resident(self) -> int:
        return sum(self.weights.values())

    @property
    def activations(self) -> int:
        return max(self.stages.values(), default=0)

    @property
    def peak(self) -> int:
        return self.resident + self.activations

    @property
    def fits(self) -> bool:
        return self.budget is None or self.peak <= self.budget

    @property
    def block_range(self) -> str:
        return _ranges(self.blocks)


def _ranges(indices: Sequence[int]) -> str:
    parts: list[tuple[int, int]] = []
    for i in sorted(indices):
        if parts and parts[-1][1] == i - 1:
            parts[-1] = (parts[-1][0], i)
        else:
            parts.append((i, i))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts) or "-"


@dataclass
class MemoryPlan:
    """A per-device prediction for one job under one placement kind, and the verdict."""

    kind: str
    job: JobSize
    options: PlanOptions
    devices: list[DeviceLoad]
    sizes: ComponentSizes
    activations: Activations
    device_map: dict[str, int | str] = field(default_factory=dict)
    text_device: str = "cpu"
    text_streamed: bool = False
    vae_device: str = "cpu"
    vae_tiling: bool = False
    problems: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    host: Host | None = None  # the RAM a cpu plan is checked against

    @property
    def verdict(self) -> str:
        return "refuse" if self.problems else "ok"

    @property
    def peak_device(self) -> DeviceLoad:
        gpus = [d for d in self.devices if d.budget is not None] or self.devices
        return max(gpus, key=lambda d: d.peak)

    def summary(self) -> str:
        """One paragraph for the UI next to Generate."""
        top = self.peak_device
        budget = f" of {gib(top.budget)}" if top.budget is not None else ""
        where = "; ".join(
            f"{d.device}: " + ", ".join(d.notes) for d in self.devices if d.notes
        )
        text = f"{self.kind} ({where}). Predicted peak {gib(top.peak)}{budget} GiB on {top.device}: {self.verdict}."
        if self.problems:
            text += " " + " ".join(self.problems)
        if self.suggestions:
            text += " Try: " + "; ".join(self.suggestions) + "."
        return text


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.1f}"


@contextmanager
def _quiet_accelerate(simulated: bool) -> Iterator[None]:
    # accelerate warns that simulated GPU indices are not visible; the plan is still valid.
    log = logging.getLogger("accelerate.utils.modeling")
    level = log.level
    if simulated:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def split_blocks(model: torch.nn.Module, max_memory: Mapping[int, int], simulated: bool = False) -> dict[str, int | str]:
    """accelerate's device map over GPUs: balanced, blocks never split; leftovers map to "disk"."""
    no_split = list(model._no_split_modules)
    with _quiet_accelerate(simulated):
        balanced = get_balanced_memory(model, max_memory=dict(max_memory), no_split_module_classes=no_split)
        return dict(infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split))


def _entry_bytes(model: torch.nn.Module, name: str, lora: bool) -> int:
    try:
        return module_bytes(model.get_submodule(name), lora=lora)
    except AttributeError:
        tensor = model.get_parameter(name) if name in dict(model.named_parameters()) else model.get_buffer(name)
        return 0 if lora else tensor.numel() * tensor.element_size()


def _device_of(name: str, device_map: Mapping[str, int | str]) -> int | str | None:
    """The device of module ``name`` under a device map whose keys may be its ancestors."""
    matches = [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]
    return device_map[max(matches, key=len)] if matches else None


def plan_memory(kind: str, gpus: Sequence[Gpu], job: JobSize, options: PlanOptions | None = None,
                device_map: Mapping[str, int | str] | None = None, simulated: bool = False,
                suggest: bool = True, host: Host | None = None) -> MemoryPlan:
    """Predict per-device memory for ``job`` under placement ``kind`` and give a verdict.

    ``device_map`` fixes the shard split (the one already applied); without it the split is
    planned here. With ``suggest`` a refused plan carries the changes that would fit. ``host`` is
    the RAM a ``cpu`` plan must fit in; without it this machine's available RAM is read now.
    """
    options = options or PlanOptions()
    if kind == "cpu" and options.weights != "fp32":
        options = replace(options, weights="fp32", vae_dtype="fp32")
    models = meta_models(options)
    acts = estimate_activations(job, options, models)
    planners = {"shard": _plan_shard, "single": _plan_single, "offload": _plan_offload, "cpu": _plan_cpu}
    if kind not in planners:
        raise PusaInputError("placement", f"{kind!r} is not one of {', '.join(planners)}")
    if kind != "cpu" and not gpus:
        raise PusaInputError("placement", f"{kind!r} needs a CUDA GPU and none is visible; use 'cpu'")
    if kind == "shard" and len(gpus) < 2:
        raise PusaInputError("placement", "'shard' needs two or more GPUs; use 'single' or 'offload' on one")
    if kind == "cpu" and host is None:
        host = detect_host()
    plan = MemoryPlan(kind, job, options, [], models.sizes, acts, host=host)
    planners[kind](plan, list(gpus), models, device_map, simulated)
    for dev in plan.devices:
        if not dev.fits:
            plan.problems.append(_shortfall(dev, plan.host if dev.device == "cpu" else None))
    if plan.problems and suggest:
        plan.suggestions = suggest_changes(plan, gpus, simulated)
    return plan


def _shortfall(dev: DeviceLoad, host: Host | None) -> str:
    if host is None:
        return f"{dev.device} needs {gib(dev.peak)} GiB but has {gib(dev.budget)} GiB to plan with."
    return (f"{dev.device} needs {gib(dev.peak)} GiB of RAM but has {gib(dev.budget)} GiB to plan with "
            f"({gib(host.available)} GiB available, {gib(host.reserve)} GiB kept for the system).")


def _place_vae(plan: MemoryPlan, loads: list[DeviceLoad]) -> None:
    """The VAE on the device with the most room for its decode; tiled only when untiled would not fit."""
    acts, vae = plan.activations, plan.sizes.vae

    def room(d: DeviceLoad) -> int:
        return d.budget - d.resident - vae - acts.sampler

    for tiled, need in ((False, acts.vae_decode), (True, acts.vae_decode_tiled)):
        fitting = [d for d in loads if room(d) >= need]
        if fitting:
            home = max(fitting, key=room)
            break
    else:  # the device's peak check reports the shortfall
        home, tiled, need = max(loads, key=room), True, acts.vae_decode_tiled
    home.weights["vae"] = home.weights.get("vae", 0) + vae
    home.stages["decode"] = need + acts.sampler
    home.notes.append("VAE" + (" (tiled decode)" if tiled else ""))
    plan.vae_device, plan.vae_tiling = home.device, tiled


def _text_stage(plan: MemoryPlan, load: DeviceLoad, streamed: bool) -> None:
    sizes, acts = plan.sizes, plan.activations
    plan.text_device, plan.text_streamed = load.device, streamed
    if streamed:
        load.stages["encode"] = STREAMED_TEXT_LAYERS * sizes.text_encoder_largest_layer + acts.text_encode
        load.notes.append("text encoder (streamed layer by layer)")
    else:
        load.weights["text encoder"] = load.weights.get("text encoder", 0) + sizes.text_encoder
        load.stages["encode"] = acts.text_encode
        load.notes.append("text encoder")


def _plan_shard(plan: MemoryPlan, gpus: list[Gpu], models: MetaModels, device_map: Mapping[str, int | str] | None,
                simulated: bool) -> None:
    sizes, acts = plan.sizes, plan.activations
    first = gpus[0].index
    reserve = {g.index: acts.transformer + (acts.sampler if g.index == first else 0) for g in gpus}
    room = {g.index: g.budget - reserve[g.index] for g in gpus}
    if device_map is None:
        # Room for a resident text encoder is kept on the GPU with the most room when the
        # blocks still fit beside it; otherwise it is streamed in layer by layer while encoding.
        best = max(gpus, key=lambda g: room[g.index]).index
        for keep_text in (True, False):
            limits = {i: max(0, r - (sizes.text_encoder if keep_text and i == best else 0)) for i, r in room.items()}
            device_map = split_blocks(models.transformer, limits, simulated)
            if all(isinstance(v, int) for v in device_map.values()):
                break
    plan.device_map = dict(device_map)
    loads = {g.index: DeviceLoad(g.device, g.name, g.budget) for g in gpus}
    spill = DeviceLoad("cpu", "host (not planned)", None)
    for name, where in device_map.items():
        target = loads.get(where, spill) if isinstance(where, int) else spill
        base, lora = _entry_bytes(models.transformer, name, False), _entry_bytes(models.transformer, name, True)
        target.weights["transformer"] = target.weights.get("transformer", 0) + base
        if lora:
            target.weights["lora"] = target.weights.get("lora", 0) + lora
    for index in range(sizes.num_blocks):
        where = _device_of(f"blocks.{index}", device_map)
        target = loads.get(where, spill) if isinstance(where, int) else spill
        target.blocks += (index,)
    for index, load in loads.items():
        if load.blocks or index == first:
            load.stages["denoise"] = acts.transformer + (acts.sampler if index == first else 0)
        if load.blocks:
            load.notes.append(f"blocks {load.block_range}")
    if spill.weights:
        plan.problems.append(f"The transformer does not fit on the GPUs: blocks {spill.block_range} are left over.")
    ordered = [loads[g.index] for g in gpus]

    def spare(d: DeviceLoad) -> int:
        return d.budget - d.resident - max(d.stages.values(), default=0)

    resident = [d for d in ordered if spare(d) >= sizes.text_encoder + acts.text_encode]
    if resident:
        _text_stage(plan, max(resident, key=spare), streamed=False)
    else:
        _text_stage(plan, max(ordered, key=spare), streamed=True)
    _place_vae(plan, ordered)
    plan.devices = ordered + ([spill] if spill.weights else [])


def _plan_single(plan: MemoryPlan, gpus: list[Gpu], models: MetaModels, device_map: Any, simulated: bool) -> None:
    gpu = max(gpus, key=lambda g: g.budget)
    sizes, acts = plan.sizes, plan.activations
    load = DeviceLoad(gpu.device, gpu.name, gpu.budget, blocks=tuple(range(sizes.num_blocks)))
    load.weights = {"transformer": sizes.transformer, "lora": sizes.lora}
    load.stages["denoise"] = acts.transformer + acts.sampler
    load.notes.append(f"all {sizes.num_blocks} blocks")
    _text_stage(plan, load, streamed=False)
    _place_vae(plan, [load])
    plan.devices = [load]


def _plan_offload(plan: MemoryPlan, gpus: list[Gpu], models: MetaModels, device_map: Any, simulated: bool) -> None:
    gpu = max(gpus, key=lambda g: g.budget)
    sizes, acts = plan.sizes, plan.activations
    window = min(OFFLOAD_RESIDENT_BLOCKS, sizes.num_blocks)
    load = DeviceLoad(gpu.device, gpu.name, gpu.budget)
    load.weights = {"transformer": sizes.non_block + window * (sizes.block - sizes.block_lora)}
    if sizes.lora:
        load.weights["lora"] = window * sizes.block_lora
    load.stages["denoise"] = acts.transformer + acts.sampler
    load.notes.append(f"blocks streamed from CPU ({window} on the GPU at a time)")
    host = DeviceLoad("cpu", "host (pinned)", None)
    host.weights = {"transformer": sizes.transformer, "lora": sizes.lora, "text encoder": sizes.text_encoder}
    host.notes.append("offloaded weights")
    _text_stage(plan, load, streamed=True)
    _place_vae(plan, [load])
    plan.devices = [load, host]


def _plan_cpu(plan: MemoryPlan, gpus: list[Gpu], models: MetaModels, device_map: Any, simulated: bool) -> None:
    sizes, acts, host = plan.sizes, plan.activations, plan.host
    assert host is not None  # plan_memory reads it for cpu plans
    # Weights already loaded are not in ``available`` any more; the plan counts them in its peak.
    loaded = sizes.transformer + sizes.lora + sizes.text_encoder + sizes.vae if host.holds_weights else 0
    load = DeviceLoad("cpu", host.name, host.budget + loaded, blocks=tuple(range(sizes.num_blocks)))
    load.weights = {"transformer": sizes.transformer, "lora": sizes.lora}
    load.stages["denoise"] = acts.transformer + acts.sampler
    load.notes.append(f"all {sizes.num_blocks} blocks, float32")
    _text_stage(plan, load, streamed=False)
    _place_vae(plan, [load])
    plan.devices = [load]


SMALLER_SIZES = ((1280, 720), (1024, 576), (832, 480), (640, 368), (480, 272))


def suggest_changes(plan: MemoryPlan, gpus: Sequence[Gpu], simulated: bool = False) -> list[str]:
    """Changes that would fit, each checked with the planner: fp8, offload, fewer frames, smaller size."""
    job, options, kind = plan.job, plan.options, plan.kind
    out: list[str] = []

    def fits(k: str, j: JobSize, o: PlanOptions) -> MemoryPlan | None:
        p = plan_memory(k, gpus, j, o, simulated=simulated, suggest=False, host=plan.host)
        return p if p.verdict == "ok" else None

    def peak(p: MemoryPlan) -> str:
        return f"peak {gib(p.peak_device.peak)} GiB on {p.peak_device.device}"

    fp8 = replace(options, weights="fp8")
    if kind != "cpu" and options.weights == "bf16" and (p := fits(kind, job, fp8)):
        out.append(f"fp8 weights (--fp8), {peak(p)}")
    if kind in ("shard", "single"):
        for o, flag in ((options, "--placement offload"), (fp8, "--placement offload --fp8")):
            if o.weights != "fp32" and (p := fits("offload", job, o)):
                out.append(f"offload ({flag}), {peak(p)}")
                break
    candidates = list(range(job.frames - 4, 0, -4))
    lo, hi, best = 0, len(candidates) - 1, None
    while lo <= hi:  # fewer frames only lowers memory, so the search can bisect
        mid = (lo + hi) // 2
        if fits(kind, JobSize(job.width, job.height, candidates[mid]), options):
            best, hi = candidates[mid], mid - 1
        else:
            lo = mid + 1
    if best is not None:
        out.append(f"{best} frames instead of {job.frames}")
    landscape = job.width >= job.height
    for w, h in SMALLER_SIZES:
        w, h = (w, h) if landscape else (h, w)
        if w * h < job.width * job.height and fits(kind, JobSize(w, h, job.frames), options):
            out.append(f"{w}x{h} instead of {job.width}x{job.height}")
            break
    if not out and kind == "cpu":
        out.append("no smaller setting fits this machine's RAM; close other programs or use a GPU")
    elif not out:
        out.append("no smaller setting fits these GPUs; use a GPU with more free memory")
    return out
