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
    all-gather per block when the tokens were padded, and the all-gather of the output
    ``[tokens/N, 64]`` at the end.
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
BF16_BYTES = 2
FP32_BYTES = 4
LATENT_CHANNELS = 16
HEAD_DIM = 128  # Wan2.1-14B: 40 heads of 128
OUT_FEATURES = LATENT_CHANNELS * 2 * 2  # proj_out: 16 channels x the 1x2x2 patch
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


def step_time(layout: Layout, width: int, height: int, frames: int, cfg: float, gpu: GpuClass,
              link: Link) -> StepTime:
    """The predicted step of a ``width x height x frames`` job at ``cfg`` under ``layout``."""
    tokens = latent_tokens(width, height, frames)
    passes = 2 if cfg > 1 else 1
    one_gpu = passes * pass_flops(tokens) / gpu.flops_per_s
    upcast = FP8_UPCAST_BYTES * WAN_14B_PARAMS / (gpu.memory_gbps * 1e9) if layout.fp8 else 0.0
    # cfg-parallel: each guidance group runs one pass; within a group, sequence ranks split tokens.
    rank_passes = 1 if layout.cfg_degree == 2 else passes
    degree = layout.sequence_degree
    local = -(-tokens // degree)
    pass_s = pass_flops(local * degree) / degree / gpu.flops_per_s + upcast
    collectives = []
    if degree > 1:
        collectives += _ulysses(tokens, degree, rank_passes)
    if layout.cfg_degree == 2:
        velocity = LATENT_CHANNELS * latent_frame_count(frames) * _latent_pixels(width, height) + 1
        collectives.append(Collective("cfg all-gather of the velocity", 1, velocity * BF16_BYTES))
    if layout.kind == "shard":
        collectives += _shard_hops(tokens, latent_frame_count(frames), layout.shard_blocks, passes)
    compute = rank_passes * pass_s
    comm = sum(c.seconds(link) for c in collectives)
    if layout.kind == "offload":
        streamed = Collective("weights streamed from the host", passes, passes * layout.streamed_bytes)
        collectives.append(streamed)
        compute = passes * max(pass_s, layout.streamed_bytes / HOST_LINK.bytes_per_s)
    return StepTime(layout.kind, gpu, link, compute, comm, one_gpu, tuple(collectives))


def _latent_pixels(width: int, height: int) -> int:
    return (height // SPATIAL_COMPRESSION) * (width // SPATIAL_COMPRESSION)


def _ulysses(tokens: int, degree: int, passes: int) -> list[Collective]:
    """Per step, one rank's Ulysses traffic: the all-to-alls, the padding mask, the output gather."""
    local = -(-tokens // degree)
    others = degree - 1
    # An all-to-all keeps 1/N of the rank's [local, dim] buffer and sends the other N-1 parts.
    slab = local * WAN_14B_DIM * BF16_BYTES * others // degree
    count = passes * WAN_14B_LAYERS * ALL_TO_ALLS_PER_BLOCK
    out = [Collective("Ulysses all-to-alls (q, k, v, out)", count, count * slab)]
    if tokens % degree:  # the rank's [local] bool key mask, gathered by every block's attention
        out.append(Collective("padding mask all-gather", passes * WAN_14B_LAYERS, passes * WAN_14B_LAYERS * local))
    out.append(Collective("output all-gather", passes, passes * local * OUT_FEATURES * BF16_BYTES * others))
    return out


def _shard_hops(tokens: int, latent_frames: int, blocks: tuple[int, ...], passes: int) -> list[Collective]:
    """Per step, what crosses from one GPU to the next: hidden states once, each block's other inputs."""
    later = [n for n in blocks[1:] if n]
    hidden = tokens * WAN_14B_DIM * BF16_BYTES
    inputs = (2 * tokens * HEAD_DIM * FP32_BYTES + TEXT_TOKENS * WAN_14B_DIM * BF16_BYTES
              + latent_frames * 6 * WAN_14B_DIM * FP32_BYTES)
    return [
        Collective("hidden states to the next GPU", passes * len(later), passes * len(later) * hidden),
        Collective("block inputs copied by accelerate's hooks", passes * sum(later), passes * sum(later) * inputs),
    ]
