"""A memory plan: what each device holds and needs per stage for one job, and the verdict.

A job runs in three stages, never at the same time: text encoding, denoising, VAE decoding. A
device's peak is therefore what stays resident on it plus the largest stage working set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .activations import Activations, JobSize
from .devices import Host, gib
from .models import ComponentSizes, PlanOptions


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
    cfg_degree: int = 1  # guidance groups: 2 under cfg-parallel, each rank runs one of a step's passes
    sequence_degree: int = 1  # ranks sharing every pass's tokens (sequence-parallel, or within a cfg group)

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
