"""Predicted step time of each placement relative to one GPU: a stated model, torch-free.

A denoising step runs the 14B once per guidance pass (two with cfg > 1, one at cfg 1). The model:

* **Compute.** :func:`pusa_core.facts.pass_flops` FLOPs per pass, at :data:`ACHIEVED_FRACTION` of
  the GPU class's dense bf16 tensor peak. The LoRA's own FLOPs (rank 512, unfused: ~17% more in the
  linears) are not counted: they scale every placement alike, so they only shrink the share of
  communication, which makes these predictions conservative.
* **Communication**, from the tensors' shapes, in bf16, one rank's bytes in one direction, at the
  link's effective bandwidth plus a latency per collective. Nothing overlaps compute (diffusers'
  Ulysses waits for each all-to-all; the cfg all-gather sits between the pass and the Euler step).
  - ``cfg-parallel``: one all-gather a step of the ``[1, 16, F, H/8, W/8]`` velocity (plus the
    stop code, :mod:`pusa_core.parallel`): each rank sends its pass's output and receives the other.
  - ``sequence-parallel``: per pass, 4 all-to-alls per block (q, k, v and the attention output,
    each ``[tokens/N, dim]``; a rank keeps 1/N of each and sends the rest), the padding mask's
    all-gather per block when the tokens were padded, the all-gather of the output
    ``[tokens/N, 64]`` at the end, and the ranks' one-int64 stop-code all-reduce before each pass.
  - ``shard``: per pass, the hidden states ``[tokens, dim]`` cross to the next GPU once, and
    accelerate's hook copies every block's other inputs (rotary tables ``2 x [tokens, 128]`` fp32,
    text states ``[512, dim]``, per-frame modulation ``[F, 6, dim]`` fp32) to that block's GPU again.
  - ``offload``: the streamed weights cross the host's PCIe link every pass, overlapped with the
    pass by diffusers' CUDA streams: the pass takes the longer of the two.
* **fp8 storage** upcasts each linear weight to bf16 in every pass: 3 more bytes of memory traffic
  per parameter (read 1, write 2) at the class's memory bandwidth.

"One GPU" is the same GPU running the whole job, as ``single`` would, whether or not it fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..facts import (SPATIAL_COMPRESSION, TEXT_TOKENS, WAN_14B_DIM, WAN_14B_LAYERS, WAN_14B_PARAMS,
                     latent_frame_count, latent_tokens, pass_flops)

# A typical achieved share of the dense bf16 tensor peak for the 14B's large matmuls and attention;
# `benchmarks/gpu_check.py` measures it on a real GPU.
ACHIEVED_FRACTION = 0.40
FP32_BYTES = 4
# Ulysses exchanges q, k, v before and the attention output after attention, in every block.
ALL_TO_ALLS_PER_BLOCK = 4
# diffusers' layerwise casting per fp8 parameter and pass: read the fp8 weight, write its bf16 copy.
FP8_UPCAST_BYTES = 3


@dataclass(frozen=True)
class GpuClass:
    """A representative card for a memory size: dense bf16 tensor peak and memory bandwidth."""

    name: str
    memory_gb: float
    bf16_tflops: float  # dense, FP32 accumulate, from the vendor's datasheet
    memory_gbps: float

    @property
    def flops_per_s(self) -> float:
        return ACHIEVED_FRACTION * self.bf16_tflops * 1e12


# NVIDIA datasheets: RTX 4090 (Ada whitepaper: 165.2 bf16 with FP32 accumulate, 1008 GB/s),
# L40S (362 dense bf16, 864 GB/s, PCIe only), H100 SXM (989 dense bf16, 3.35 TB/s).
GPU_CLASSES = (
    GpuClass("RTX 4090", 24, 165.2, 1008),
    GpuClass("L40S", 48, 362.0, 864),
    GpuClass("H100 SXM", 80, 989.0, 3350),
)


def gpu_class(memory_gb: float) -> GpuClass:
    """The class of a card with ``memory_gb``: the smallest class with at least that much, else the largest."""
    return next((c for c in GPU_CLASSES if memory_gb <= c.memory_gb), GPU_CLASSES[-1])


@dataclass(frozen=True)
class Link:
    """The link between two GPUs: effective bandwidth one way, and the latency of one collective."""

    name: str
    bytes_per_s: float
    latency_s: float


# PCIe 4.0 x16 is 31.5 GB/s per direction raw (16 GT/s x 16 lanes, 128b/130b); NCCL's bus bandwidth
# between two cards on it is typically 20-25 GB/s. NVLink: H100's NVLink 4 is 450 GB/s per
# direction (A100's NVLink 3: 300); NCCL reaches about two thirds of it. Latency: tens of
# microseconds a collective on PCIe, about ten on NVLink.
LINKS = {
    "pcie4": Link("PCIe 4 x16", 25e9, 25e-6),
    "nvlink": Link("NVLink", 300e9, 10e-6),
}
DEFAULT_LINK = "pcie4"
# Offloaded weights come from host memory over the GPU's own PCIe slot, whatever joins the GPUs.
HOST_LINK = LINKS["pcie4"]


@dataclass(frozen=True)
class Collective:
    """One kind of transfer in a step: how many, and the bytes one rank sends for all of them."""

    name: str
    count: int
    bytes: int

    def seconds(self, link: Link) -> float:
        return self.bytes / link.bytes_per_s + self.count * link.latency_s


@dataclass(frozen=True)
class StepTime:
    """One denoising step's predicted time under a placement, and the same step on one GPU."""

    kind: str
    gpu: GpuClass
    link: Link
    compute_s: float  # the busiest rank's passes, including fp8 upcasts
    comm_s: float  # communication that does not overlap compute
    one_gpu_s: float
    collectives: tuple[Collective, ...]

    @property
    def seconds(self) -> float:
        return self.compute_s + self.comm_s

    @property
    def ratio(self) -> float:
        """Step time relative to one GPU."""
        return self.seconds / self.one_gpu_s

    @property
    def link_bytes(self) -> int:
        """Bytes one rank (or the host, for offload) sends over its link per step."""
        return sum(c.bytes for c in self.collectives)


@dataclass(frozen=True)
class Layout:
    """What the speed model needs of a placement (a memory plan gives it)."""

    kind: str
    cfg_degree: int = 1
    sequence_degree: int = 1
    fp8: bool = False
    shard_blocks: tuple[int, ...] = ()  # blocks on each GPU, for shard
    streamed_bytes: int = 0  # weight bytes streamed from the host per pass, for offload


@dataclass(frozen=True)
class Shapes:
    """The transformer's sizes that set the bytes of the collectives (defaults: Wan2.1-14B in bf16)."""

    dim: int = WAN_14B_DIM
    layers: int = WAN_14B_LAYERS
    head_dim: int = 128
    latent_channels: int = 16
    element_bytes: int = 2  # the transformer's dtype: bf16 on GPUs

    @property
    def out_features(self) -> int:
        """proj_out's features per token: the latent channels times the 1x2x2 patch."""
        return self.latent_channels * 4


WAN_14B = Shapes()
# The stop code every rank agrees on (pusa_core.parallel): one int64 all-reduce.
STOP_CODE_BYTES = 8


def step_time(layout: Layout, width: int, height: int, frames: int, cfg: float, gpu: GpuClass,
              link: Link) -> StepTime:
    """The predicted step of a ``width x height x frames`` job at ``cfg`` under ``layout`` (the 14B)."""
    tokens = latent_tokens(width, height, frames)
    passes = 2 if cfg > 1 else 1
    one_gpu = passes * pass_flops(tokens) / gpu.flops_per_s
    upcast = FP8_UPCAST_BYTES * WAN_14B_PARAMS / (gpu.memory_gbps * 1e9) if layout.fp8 else 0.0
    degree = layout.sequence_degree
    padded = -(-tokens // degree) * degree
    pass_s = pass_flops(padded) / degree / gpu.flops_per_s + upcast
    found = step_collectives(layout, width, height, frames, cfg)
    if layout.kind == "offload":  # the copies overlap the pass: the longer of the two
        return StepTime(layout.kind, gpu, link, passes * max(pass_s, layout.streamed_bytes / HOST_LINK.bytes_per_s),
                        0.0, one_gpu, found)
    comm = sum(c.seconds(link) for c in found)
    return StepTime(layout.kind, gpu, link, _rank_passes(layout, cfg) * pass_s, comm, one_gpu, found)


def _rank_passes(layout: Layout, cfg: float) -> int:
    """Passes one rank runs a step: under cfg-parallel one guidance group runs each of the two."""
    return 1 if layout.cfg_degree == 2 or cfg == 1 else 2


def step_collectives(layout: Layout, width: int, height: int, frames: int, cfg: float,
                     shapes: Shapes = WAN_14B) -> tuple[Collective, ...]:
    """Every transfer of one step under ``layout``, with the bytes one rank sends (the host, for offload)."""
    tokens = latent_tokens(width, height, frames)
    passes = _rank_passes(layout, cfg)
    found: list[Collective] = []
    if layout.sequence_degree > 1:
        found += _ulysses(tokens, layout.sequence_degree, passes, shapes)
        # A rank agrees on the stop code before each pass (sequence-parallel), or before its pass
        # and after the exchange (2 x N).
        agreements = 2 if cfg > 1 else 1
        found.append(Collective("stop-code all-reduce", agreements, agreements * STOP_CODE_BYTES))
    if layout.cfg_degree == 2:
        velocity = shapes.latent_channels * latent_frame_count(frames) * _latent_pixels(width, height) + 1
        found.append(Collective("cfg all-gather of the velocity", 1, velocity * shapes.element_bytes))
    if layout.kind == "shard":
        found += _shard_hops(tokens, latent_frame_count(frames), layout.shard_blocks, 2 if cfg > 1 else 1, shapes)
    if layout.kind == "offload":
        found.append(Collective("weights streamed from the host", passes, passes * layout.streamed_bytes))
    return tuple(found)


def _latent_pixels(width: int, height: int) -> int:
    return (height // SPATIAL_COMPRESSION) * (width // SPATIAL_COMPRESSION)


def _ulysses(tokens: int, degree: int, passes: int, shapes: Shapes) -> list[Collective]:
    """Per step, one rank's Ulysses traffic: the all-to-alls, the padding mask, the output gather."""
    local = -(-tokens // degree)
    others = degree - 1
    # An all-to-all keeps 1/N of the rank's [local, dim] buffer and sends the other N-1 parts.
    slab = local * shapes.dim * shapes.element_bytes * others // degree
    count = passes * shapes.layers * ALL_TO_ALLS_PER_BLOCK
    found = [Collective("Ulysses all-to-alls (q, k, v, out)", count, count * slab)]
    if tokens % degree:  # the rank's [local] bool key mask, gathered by every block's attention
        blocks = passes * shapes.layers
        found.append(Collective("padding mask all-gather", blocks, blocks * local * others))
    output = local * shapes.out_features * shapes.element_bytes * others
    found.append(Collective("output all-gather", passes, passes * output))
    return found


def _shard_hops(tokens: int, latent_frames: int, blocks: tuple[int, ...], passes: int,
                shapes: Shapes) -> list[Collective]:
    """Per step, what crosses from one GPU to the next: hidden states once, each block's other inputs."""
    later = [n for n in blocks[1:] if n]
    hidden = tokens * shapes.dim * shapes.element_bytes
    inputs = (2 * tokens * shapes.head_dim * FP32_BYTES + TEXT_TOKENS * shapes.dim * shapes.element_bytes
              + latent_frames * 6 * shapes.dim * FP32_BYTES)
    return [
        Collective("hidden states to the next GPU", passes * len(later), passes * len(later) * hidden),
        Collective("block inputs copied by accelerate's hooks", passes * sum(later), passes * sum(later) * inputs),
    ]
