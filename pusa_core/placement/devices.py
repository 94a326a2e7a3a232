"""The devices a plan is made for: CUDA GPUs and the host's RAM, detected now or simulated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import psutil
import torch

from ..errors import PusaInputError

GIB = 1024**3

# A GPU is never planned to the last byte: the CUDA context, cuBLAS workspaces and kernels take
# about a GiB, and the caching allocator loses some memory to fragmentation.
CUDA_CONTEXT_BYTES = GIB
FRAGMENTATION_HEADROOM = 0.10
# Host RAM is planned with a reserve too: the OS, the app itself (Python, Gradio, torch's CPU
# allocator caches) and other programs need room. A tenth of the RAM, at least 2 GiB.
HOST_RESERVE_FRACTION = 0.10
HOST_RESERVE_MIN_BYTES = 2 * GIB


def gib(n: int | None) -> str:
    """Bytes as GiB with one decimal, ``-`` for none."""
    return "-" if n is None else f"{n / GIB:.1f}"


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


def detect_gpus() -> list[Gpu]:
    """The visible CUDA GPUs with their name, total and currently free memory."""
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(Gpu(index, torch.cuda.get_device_name(index), total, free))
    return gpus


def detect_host(holds_weights: bool = False) -> Host:
    """This machine's RAM now (psutil reads ``MemAvailable``: free memory plus reclaimable caches)."""
    memory = psutil.virtual_memory()
    return Host("host RAM", memory.total, memory.available, holds_weights)


def simulated_gpus(sizes_gb: Sequence[float]) -> list[Gpu]:
    """GPUs of the given sizes, all memory free. Sizes are the cards' nominal GB, which is what
    nvidia-smi reports in GiB (a "48 GB" card has 47.99 GiB)."""
    gpus = []
    for index, size in enumerate(sizes_gb):
        if not size > 0:
            raise PusaInputError("gpus", f"GPU {index} has size {size!r}; give positive GB, e.g. 48,48")
        gpus.append(Gpu(index, f"simulated {size:g} GB", int(size * GIB), int(size * GIB)))
    return gpus


def simulated_host(size_gb: float) -> Host:
    """A machine with ``size_gb`` GiB of RAM, all of it available (for plans and tests)."""
    if isinstance(size_gb, bool) or not isinstance(size_gb, (int, float)) or not size_gb > 0:
        raise PusaInputError("ram", f"{size_gb!r} is not a RAM size; give positive GB, e.g. 32")
    return Host(f"simulated {size_gb:g} GB RAM", int(size_gb * GIB), int(size_gb * GIB))
