"""Wan2.1 / Pusa V1.0 facts, written once: defaults, value limits, frame arithmetic, LoRA targets.

Torch-free on purpose: the engine, the UI's sliders, the ZeroGPU estimate, the memory planner and the
training code all read these, and some of them must import without torch initialising.

Wan's VAE compresses time 4x causally: latent 0 is pixel frame 0 alone, latent k >= 1 covers pixel
frames 4k-3..4k. Conditioning positions are latent indices.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# -- Pusa's published defaults --------------------------------------------------------------------
DEFAULT_ALPHA = 1.4  # LoRA multiplier on the trained delta, W + alpha * (B @ A)
DEFAULT_NOISE_MULTIPLIER = 0.2  # a conditioning frame's sigma = multiplier x the step's sigma
DEFAULT_STEPS = 10
DEFAULT_CFG = 5.0
DEFAULT_SHIFT = 5.0
DEFAULT_WIDTH, DEFAULT_HEIGHT = 832, 480
HD_WIDTH, HD_HEIGHT = 1280, 720  # the largest size Pusa is run at
DEFAULT_FRAMES = 81
DEFAULT_FPS = 16
PUSA_LORA_RANK = 512

# Wan2.1-T2V-14B's size, for time estimates (the memory planner reads the exact config).
WAN_14B_PARAMS = 14e9
WAN_14B_DIM = 5120
WAN_14B_LAYERS = 40

# -- presets ----------------------------------------------------------------------------------------
# Quality runs the model's own defaults; Fast stacks the LightX2V step- and CFG-distilled LoRA on
# Pusa's (at its alpha) and runs 4 steps without guidance: 4 transformer passes instead of 10 x 2.
QUALITY, FAST = "quality", "fast"
PRESETS = (QUALITY, FAST)
FAST_STEPS = 4
FAST_CFG = 1.0
LIGHTX2V_WEIGHT = 1.0
DEFAULT_EXTRA_LORA_WEIGHT = 1.0  # an --extra-lora given without :WEIGHT

# -- step caching ----------------------------------------------------------------------------------
# diffusers' cache hooks that work with per-frame timesteps (see pusa_core.step_cache for the ones that do not).
STEP_CACHE_OFF = "off"
FIRST_BLOCK, TAYLORSEER = "first-block", "taylorseer"
STEP_CACHE_KINDS = (FIRST_BLOCK, TAYLORSEER)
# The caching table was measured at 10 steps; fewer steps move further each, so nothing measured covers them.
MIN_CACHED_STEPS = 10
TAYLORSEER_WARMUP_STEPS = 3  # steps run in full before TaylorSeer predicts (diffusers' default)



def lora_merge_blocker(kind: str, weights: str, offloaded: bool = False) -> str | None:
    """Why a placement of ``kind`` with ``weights`` storage runs the LoRAs unmerged, or None when the
    engine merges them into the weights (the memory planner and the engine both ask this)."""
    if weights == "fp8":
        return "fp8 weight storage would round the merged weights"
    if kind == "offload":
        return "offloading streams the blocks from host memory"
    if offloaded:
        return "part of the transformer is offloaded to the host"
    return None


# -- GPU options ------------------------------------------------------------------------------------
DEFAULT_ATTENTION_BACKEND = "native"  # torch's scaled_dot_product_attention, through diffusers' dispatcher
ATTENTION_BACKEND_FLAG = "--attention-backend"

# -- Wan's geometry ---------------------------------------------------------------------------------
TEMPORAL_COMPRESSION = 4
SPATIAL_COMPRESSION = 8
SIZE_MULTIPLE = 16  # VAE 8x times the transformer's 2x2 patch
TEXT_TOKENS = 512  # umT5 context length Wan was trained with

# Linear layers of each Wan block that Pusa's LoRA adapts: diffusers name -> original Wan name (the
# inverse of diffusers' convert_wan_transformer_to_diffusers renames for these linears).
LORA_TARGETS: dict[str, str] = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
LORA_TARGET_MODULES: tuple[str, ...] = tuple(LORA_TARGETS)
# peft's target_modules for them: anchored on the block, so nothing else (e.g. the I2V models' add_k_proj) matches.
LORA_TARGET_PATTERN = r"blocks\.\d+\.(" + "|".join(re.escape(name) for name in LORA_TARGET_MODULES) + r")"


@dataclass(frozen=True)
class Limit:
    """The range a value may take; the UI's sliders and the engine's validation both read it."""

    field: str
    low: float
    high: float
    step: float
    whole: bool = False

    def span(self) -> str:
        """``"from 1 to 100"``, as the messages and the UI's help text say it."""
        show = (lambda v: str(int(v))) if self.whole else (lambda v: f"{v:g}")
        return f"from {show(self.low)} to {show(self.high)}"

    def check(self, value: object) -> str | None:
        """Why ``value`` is refused (the text after the field's name), or None when it is fine."""
        span = f"{'a whole number' if self.whole else 'a number'} {self.span()}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {span}, got {value!r}"
        if not math.isfinite(value) or not self.low <= value <= self.high:
            return f"must be {span}, got {value!r}"
        if self.whole and not float(value).is_integer():
            return f"must be {span}, got {value!r}"
        return None


STEPS = Limit("steps", 1, 100, 1, whole=True)
CFG = Limit("cfg", 1.0, 20.0, 0.5)
LORA_ALPHA = Limit("lora_alpha", 0.0, 5.0, 0.1)
SHIFT = Limit("shift", 0.1, 20.0, 0.1)
NOISE_MULTIPLIER = Limit("noise_multiplier", 0.0, 1.0, 0.05)
FPS = Limit("fps", 1, 60, 1, whole=True)
SIDE = Limit("size", SIZE_MULTIPLE, 1920, SIZE_MULTIPLE, whole=True)
FRAMES = Limit("num_frames", 1, 201, TEMPORAL_COMPRESSION, whole=True)
SEED = Limit("seed", 0, 2**32 - 1, 1, whole=True)
# An extra LoRA's weight; negative weights are how "slider" LoRAs are turned the other way.
EXTRA_LORA_WEIGHT = Limit("extra_loras", -5.0, 5.0, 0.05)
# Step caching's threshold: first-block's relative change of the first block's residual below which
# the other blocks are skipped; TaylorSeer's interval between full passes (in steps).
STEP_CACHE_THRESHOLDS = {
    FIRST_BLOCK: Limit("step_cache", 0.01, 1.0, 0.01),
    TAYLORSEER: Limit("step_cache", 2, 5, 1, whole=True),
}

MAX_PROMPT_CHARS = 4000  # far past the 512 tokens the text encoder reads; refuses absurd inputs early
MAX_INPUT_PIXELS = 40_000_000  # an upload's width x height (a 8K frame is 33 MP)
MAX_INPUT_SIDE = 16384
MAX_UPLOAD_MB = 200
MAX_SETTINGS_BYTES = 4 * 2**20  # settings metadata read back from an upload; a real one is a few kB
SETTINGS_READ_SECONDS = 20  # how long ffmpeg may take to pull the settings out of an uploaded MP4
# The app's flag for the engine's ``max_job_seconds``: its messages name it so users know what to change.
MAX_JOB_SECONDS_FLAG = "--max-job-seconds"


# -- frame arithmetic -------------------------------------------------------------------------------
def latent_frame_count(num_frames: int) -> int:
    return (num_frames - 1) // TEMPORAL_COMPRESSION + 1


def latent_to_pixel_frames(index: int) -> tuple[int, int]:
    """First and last pixel frame (inclusive) that latent slot ``index`` stands for."""
    if index == 0:
        return 0, 0
    return TEMPORAL_COMPRESSION * index - 3, TEMPORAL_COMPRESSION * index


def pixel_frame_to_latent(frame: int) -> int:
    """The latent slot that holds pixel frame ``frame``."""
    return 0 if frame == 0 else (frame + TEMPORAL_COMPRESSION - 1) // TEMPORAL_COMPRESSION


def latent_to_seconds(index: int, fps: float) -> tuple[float, float]:
    """Start and end time (seconds) of the pixel frames behind latent slot ``index``."""
    first, last = latent_to_pixel_frames(index)
    return first / fps, (last + 1) / fps


def frames_needed(positions: Sequence[int]) -> int:
    """Pixel frames a video must have to supply latent slots ``positions``."""
    return TEMPORAL_COMPRESSION * max(positions) + 1


def is_frame_count(n: object) -> bool:
    """True for a pixel frame count Wan's VAE takes: a whole number 4k+1 (any length; limits are FRAMES')."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and (n - 1) % TEMPORAL_COMPRESSION == 0


def nearest_frame_count(n: float) -> int:
    """The 4k+1 frame count nearest ``n`` within :data:`FRAMES`."""
    k = round((n - 1) / TEMPORAL_COMPRESSION)
    return int(min(FRAMES.high, max(FRAMES.low, k * TEMPORAL_COMPRESSION + 1)))


def pass_flops(tokens: int) -> float:
    """FLOPs of one 14B transformer pass over ``tokens``: 2 x params per token in the linear layers, plus
    attention's two ``tokens x tokens x dim`` matmuls (2 FLOPs each multiply-add) in every layer."""
    return 2 * WAN_14B_PARAMS * tokens + 4 * tokens**2 * WAN_14B_DIM * WAN_14B_LAYERS


def latent_tokens(width: int, height: int, num_frames: int, patch: int = 2) -> int:
    """Transformer sequence length of a job (832x480x81 -> 32,760)."""
    return latent_frame_count(num_frames) * (height // SPATIAL_COMPRESSION // patch) * (width // SPATIAL_COMPRESSION // patch)
