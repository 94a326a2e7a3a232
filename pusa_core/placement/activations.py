"""The size of a job and the activations it needs: a simple, conservative model of the largest
tensors alive at once in each stage. Every coefficient says where it comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import PusaInputError
from ..facts import (SIZE_MULTIPLE, SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION, TEXT_TOKENS, latent_frame_count,
                     latent_tokens)
from .devices import GIB
from .models import VAE_DTYPES, MetaModels, PlanOptions

# 512 tokens through umT5-XXL: hidden states, the 64-head 512x512 position bias and scores, the
# gated FFN; about 0.2 GiB in bf16, allowed 0.5.
TEXT_ENCODE_ACTIVATIONS = GIB // 2

# Transformer block working set, bytes per element of a [tokens, hidden] tensor with bf16
# compute (PusaTransformerBlock + diffusers' WanAttnProcessor, SDPA without a tokens x tokens
# matrix). Attention stage: residual and modulated input (2 + 2), fp32 norm and modulation
# temporaries (4 + 4), q, k, v and their normed / rotated copies (6 + 4), attention output (2).
# FFN stage: residual, input and output (6), fp32 gating temporaries (12), plus 4 bytes per
# [tokens, ffn_dim] element (hidden and GELU output). Measured with a live-tensor tracker on CPU
# (torch 2.13, flash SDPA): 26 bytes per element for Wan's ffn/hidden ratio 2.7; this gives 28.8.
ATTENTION_STAGE_BYTES = 24
# LoRAs left unmerged (peft runs lora_B(lora_A(x)) beside every adapted linear): bytes per element of
# a [tokens, summed rank] tensor at the block's peak, bf16 compute. Measured with the live-tensor
# tracker (tests/test_memory_plan.py): 15.6 at ranks 16 and 64. Merged LoRAs add nothing.
UNMERGED_LORA_BYTES = 16
FFN_STAGE_BYTES = 18
FFN_HIDDEN_BYTES = 4
# Cross attention over the 512 text tokens (k, v, their normed copies, fp32 norm temporaries):
# bytes per element of a [text tokens, hidden] tensor. Measured: 2 MB at hidden 256 (12 bytes).
CROSS_ATTENTION_TEXT_BYTES = 16
# Hidden states between blocks, twice: an accelerate hook copies them to the next block's device.
STREAM_BYTES = 4
# Ulysses attention (diffusers' TemplatedUlyssesAttention) makes q, k and v contiguous in send order
# and receives them back from the all-to-all before the old copies are freed: 6 + 6 bytes per
# element of the rank's [local tokens, hidden] slice, on top of the attention stage.
ULYSSES_STAGING_BYTES = 12
# Under sequence parallelism the rank's slices of the patch-embedded tokens and of the rotary tables
# are views of the whole (diffusers splits with chunk / tensor_split), so the whole tensors stay
# alive until the first block has replaced the hidden states: bytes per [tokens, hidden] element.
WHOLE_INPUT_BYTES = 2
# cfg-parallel's exchange (pusa_core.parallel): the pass's output flattened with the stop code, the
# two-row all-gather buffer: three latent-sized tensors in the transformer's dtype.
CFG_EXCHANGE_COPIES = 3
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


@dataclass(frozen=True)
class JobSize:
    """The size of one generation: pixels and frames. Pos/neg CFG run as two batch-1 passes."""

    width: int
    height: int
    frames: int

    def __post_init__(self) -> None:
        for name, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
                raise PusaInputError(name, f"{value!r} must be a positive multiple of {SIZE_MULTIPLE} "
                                           "(e.g. 1280x720, 832x480)")
        if not isinstance(self.frames, int) or self.frames < 1 or (self.frames - 1) % TEMPORAL_COMPRESSION:
            step = TEMPORAL_COMPRESSION
            raise PusaInputError("frames", f"{self.frames!r} must be {step}k+1 (1, {step + 1}, ..., 81)")

    @classmethod
    def parse(cls, size: str, frames: int) -> JobSize:
        """``"1280x720"`` and a frame count."""
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
        if not match:
            raise PusaInputError("size", f"{size!r} must be WIDTHxHEIGHT, e.g. 1280x720")
        return cls(int(match.group(1)), int(match.group(2)), frames)

    @property
    def latent_frames(self) -> int:
        return latent_frame_count(self.frames)

    @property
    def tokens(self) -> int:
        """Transformer tokens: latent frames x (H/8/2) x (W/8/2)."""
        return latent_tokens(self.width, self.height, self.frames)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}, {self.frames} frames"


@dataclass(frozen=True)
class Activations:
    """Working-set bytes of each stage for one job (see the coefficients at the top of the module)."""

    modulation: int  # per-frame modulation [B, F, 6, D] and time embedding [B, F, D], fp32
    stream: int  # hidden states (twice), rotary tables, text states
    block: int  # one block's largest working set
    fp8_upcast: int  # one linear upcast from fp8 storage
    sampler: int  # fp32 latent-sized tensors of the sampler
    cfg_exchange: int  # cfg-parallel's all-gather buffers (counted only under cfg-parallel)
    text_encode: int
    vae_decode: int
    vae_decode_tiled: int

    @property
    def transformer(self) -> int:
        return self.modulation + self.stream + self.block + self.fp8_upcast


def estimate_activations(job: JobSize, options: PlanOptions, models: MetaModels,
                         sequence_degree: int = 1) -> Activations:
    """The conservative activation model for ``job``; ``sequence_degree`` ranks share its tokens.

    Under sequence parallelism a rank runs the blocks on its slice of the tokens (the count padded
    to a multiple of the degree, as :class:`~pusa_core.transformer.TokenSequence` pads it), with
    Ulysses' all-to-all buffers, while the whole patch-embedded input and rotary tables stay alive.
    """
    cfg = models.transformer.config
    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    dim, ffn, text_dim = heads * head_dim, cfg["ffn_dim"], cfg["text_dim"]
    tokens, frames = job.tokens, job.latent_frames
    local = -(-tokens // sequence_degree)  # the rank's slice
    padded = local * sequence_degree
    scale = options.compute_bytes / 2  # the coefficients are for bf16 compute
    attention = ATTENTION_STAGE_BYTES + (ULYSSES_STAGING_BYTES if sequence_degree > 1 else 0)
    block = max(attention * local * dim, FFN_STAGE_BYTES * local * dim + FFN_HIDDEN_BYTES * local * ffn)
    block += CROSS_ATTENTION_TEXT_BYTES * TEXT_TOKENS * dim
    if options.lora_merged is False:  # None is resolved by the planner per placement; left alone, merged
        active = options.lora_rank if options.active_lora_rank is None else options.active_lora_rank
        block += UNMERGED_LORA_BYTES * local * active
    whole = WHOLE_INPUT_BYTES * padded * dim if sequence_degree > 1 else 0
    stream = STREAM_BYTES * local * dim + whole + 2 * 4 * padded * head_dim + 2 * TEXT_TOKENS * (text_dim + dim)
    latent_pixels = (job.height // SPATIAL_COMPRESSION) * (job.width // SPATIAL_COMPRESSION)
    latent_elems = cfg["in_channels"] * frames * latent_pixels
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
        cfg_exchange=CFG_EXCHANGE_COPIES * latent_elems * options.compute_bytes,
        text_encode=int(TEXT_ENCODE_ACTIVATIONS * scale),
        vae_decode=per_pixel * job.width * job.height + VAE_VIDEO_COPIES * video,
        vae_decode_tiled=per_pixel * tile_pixels + VAE_TILED_VIDEO_COPIES * video,
    )
