"""The LoRAs a job stacks on the transformer, merged into its weights for the denoising loop.

A job names the adapters it runs and their weights: Pusa's at its alpha, LightX2V at weight 1 for the
Fast preset, and any ``--extra-lora`` the engine was started with. :class:`LoraStack` makes the
transformer compute exactly ``W + sum(weight_i * B_i @ A_i)``:

- merged (where the weights are resident and not fp8): diffusers' ``fuse_lora`` adds the deltas into
  the weights once per change, so no pass runs a LoRA matmul. A change of adapters or weights first
  puts the pristine base weights back, from the memory-mapped checkpoint or a host copy, because
  peft's unmerge subtracts the delta again and that is not exact in floating point: alpha 1.4 -> 1.2
  -> 1.4 would drift. Restored from a pristine copy, the same weights give bit-identical videos.
- unmerged (offloading streams the blocks; fp8 storage would round the merged weights): peft's
  adapters run beside the base layers, each pass paying for their matmuls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from . import facts
from .errors import PusaInputError
from .lora import ADAPTER_NAME, load_lora
from .requests import Settings

if TYPE_CHECKING:  # the planner imports loading, which imports this module
    from .placement import Placement

LIGHTX2V_ADAPTER = "lightx2v"
EXTRA_LORA_FLAG = "--extra-lora"
_RESERVED = (ADAPTER_NAME, LIGHTX2V_ADAPTER)


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to load as the peft adapter ``name`` (a file, or a state dict in tests) and its default weight."""

    name: str
    source: Path | Mapping[str, torch.Tensor]
    weight: float


def adapter_name(path: Path) -> str:
    """``my style v2.safetensors`` -> ``my_style_v2``: a file's stem as a peft adapter name (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_") or "lora"


def parse_extra_lora(text: str) -> LoraSpec:
    """``PATH[:WEIGHT]`` -> a spec named after the file, at weight 1 unless one is given.

    Only a last ``:`` followed by a number splits off a weight, so paths with colons still work.
    """
    path_text, weight = text, facts.DEFAULT_EXTRA_LORA_WEIGHT
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            path_text, weight = head, float(tail)
        except ValueError:
            pass
    if not path_text:
        raise PusaInputError(EXTRA_LORA_FLAG, f"{text!r} names no file; give PATH or PATH:WEIGHT, e.g. style.safetensors:0.8")
    if problem := facts.EXTRA_LORA_WEIGHT.check(weight):
        raise PusaInputError(EXTRA_LORA_FLAG, f"{text!r}: the weight {problem}")
    path = Path(path_text)
    return LoraSpec(adapter_name(path), path, weight)


@dataclass(frozen=True)
class LoraCatalog:
    """The LoRAs a job may stack on Pusa's, known before the model loads.

    ``lightx2v`` is the Fast preset's LoRA; without it ``lightx2v_missing`` says why and how to get it.
    """

    lightx2v: LoraSpec | None = None
    lightx2v_missing: str = "the Fast preset needs the LightX2V LoRA, and this engine was started without it"
    extras: tuple[LoraSpec, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.extras:
            if spec.name in _RESERVED:
                raise PusaInputError(EXTRA_LORA_FLAG, f"{spec.source}: the name {spec.name!r} is taken by "
                                     f"{'Pusa' if spec.name == ADAPTER_NAME else 'the Fast preset'}; rename the file")
            if spec.name in seen:
                raise PusaInputError(EXTRA_LORA_FLAG, f"{spec.source}: another extra LoRA is also named "
                                     f"{spec.name!r}; rename one of the files")
            seen.add(spec.name)

    def specs(self) -> tuple[LoraSpec, ...]:
        return ((self.lightx2v,) if self.lightx2v is not None else ()) + self.extras

    def extra_defaults(self) -> dict[str, float]:
        return {spec.name: spec.weight for spec in self.extras}

    def check(self, settings: Settings) -> None:
        """Refuse the Fast preset without LightX2V, and extra LoRAs this engine has not loaded."""
        if settings.preset == facts.FAST and self.lightx2v is None:
            raise PusaInputError("preset", f"{self.lightx2v_missing}; choose Quality meanwhile")
        known = self.extra_defaults()
        for name in settings.extra_loras:
            if name not in known:
                loaded = ", ".join(known) or "none"
                raise PusaInputError("extra_loras", f"{name!r} is not loaded (loaded: {loaded}); start the app "
                                     f"with {EXTRA_LORA_FLAG} PATH[:WEIGHT] to add a LoRA")

    def weights(self, settings: Settings, has_pusa: bool) -> dict[str, float]:
        """Every adapter this job runs, with its weight (Pusa's alpha is used as it is)."""
        weights = {ADAPTER_NAME: settings.lora_alpha} if has_pusa else {}
        if settings.preset == facts.FAST:
            weights[LIGHTX2V_ADAPTER] = facts.LIGHTX2V_WEIGHT
        return weights | dict(settings.extra_loras)


def attach_loras(transformer: torch.nn.Module, catalog: LoraCatalog) -> None:
    """Load every LoRA of ``catalog`` as its own adapter, through the same checked loader as Pusa's."""
    for spec in catalog.specs():
        source = spec.source if isinstance(spec.source, Path) else dict(spec.source)
        load_lora(transformer, source, alpha=spec.weight, adapter_name=spec.name)


def tuner_layers(transformer: torch.nn.Module) -> dict[str, BaseTunerLayer]:
    """The transformer's peft-wrapped layers by module name (the checkpoint's name for their weight)."""
    return {name: m for name, m in transformer.named_modules() if isinstance(m, BaseTunerLayer)}


class PristineWeights(Protocol):
    """Where the base weights come back from after a merge."""

    def describe(self) -> str: ...

    def restore(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Overwrite each tensor with the pristine value of the checkpoint key it is keyed by."""


class HostCopy:
    """A copy of every LoRA'd base weight in host memory, for models that were not loaded from a file."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self._saved = {
            f"{name}.weight": layer.get_base_layer().weight.detach().to("cpu", copy=True)
            for name, layer in tuner_layers(transformer).items()
        }

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._saved.values())

    def describe(self) -> str:
        return f"a host copy of the LoRA'd weights ({self.nbytes / 2**20:,.1f} MiB of RAM)"

    @torch.no_grad()
    def restore(self, weights: Mapping[str, torch.Tensor]) -> None:
        for key, weight in weights.items():
            weight.copy_(self._saved[key])


class CheckpointWeights:
    """Pristine weights read back from the safetensors files the model was loaded from: memory-mapped,
    so no copy is kept; a restore reads only the LoRA'd weights.

    ``renames`` maps a file's key names to the model's (the original Wan layout); ``dtype`` is the cast
    the loader applied, so a restored weight is bit-identical to the loaded one.
    """

    def __init__(
        self, files: Sequence[Path], dtype: torch.dtype,
        renames: Callable[[Iterable[str]], Mapping[str, str]] = lambda keys: {k: k for k in keys},
    ) -> None:
        self.files, self.dtype, self._renames = tuple(files), dtype, renames
        self._index: dict[str, tuple[Path, str]] | None = None

    def describe(self) -> str:
        return f"the checkpoint ({len(self.files)} memory-mapped safetensors files, no copy kept)"

    def _where(self) -> dict[str, tuple[Path, str]]:
        """Model key -> (file, key in the file), from the files' headers."""
        if self._index is None:
            self._index = {}
            for path in self.files:
                with safe_open(str(path), framework="pt") as f:
                    for old, new in self._renames(f.keys()).items():
                        self._index[new] = (path, old)
        return self._index

    @torch.no_grad()
    def restore(self, weights: Mapping[str, torch.Tensor]) -> None:
        where = self._where()
        missing = sorted(set(weights) - set(where))
        if missing:
            raise RuntimeError(f"the checkpoint {self.files[0].parent} has no {missing[0]!r}; the base weights "
                               "cannot be restored after a LoRA merge")
        by_file: dict[Path, list[str]] = {}
        for key in weights:
            by_file.setdefault(where[key][0], []).append(key)
        for path, keys in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for key in keys:
                    weights[key].copy_(f.get_tensor(where[key][1]).to(self.dtype))


def merge_blocker(placement: Placement) -> str | None:
    """Why this placement runs the LoRAs unmerged, or None when they are merged."""
    offloaded = any(not isinstance(device, int) for device in placement.memory.device_map.values())
    return facts.lora_merge_blocker(placement.kind, placement.options.weights, offloaded)


class LoraStack:
    """The adapters of one transformer and the weights it computes with, merged unless ``blocker`` says why not.

    ``pristine`` is where merged weights are restored from; None makes a :class:`HostCopy` now, so the
    stack must be built before anything is merged.
    """

    def __init__(
        self, transformer: torch.nn.Module, catalog: LoraCatalog, has_pusa: bool,
        pristine: PristineWeights | None = None, blocker: str | None = None,
    ) -> None:
        layers = tuner_layers(transformer)
        if any(layer.merged for layer in layers.values()):
            raise RuntimeError("LoraStack needs unmerged weights: an adapter is already merged into the transformer")
        self.transformer, self.catalog, self.has_pusa, self.blocker = transformer, catalog, has_pusa, blocker
        self._has_layers = bool(layers)
        self.pristine = None if blocker is not None or not layers else (pristine or HostCopy(transformer))
        self._active: dict[str, float] | None = None  # None: unknown, the next apply sets everything
        self._dirty: set[str] = set()  # layers whose weights may differ from the pristine ones

    @property
    def merged(self) -> bool:
        """True when the denoising loop runs with the adapters merged into the weights."""
        return self.pristine is not None

    def active_rank(self, settings: Settings) -> int:
        """The summed rank of the adapters ``settings`` turn on (what an unmerged pass computes)."""
        configs = getattr(self.transformer, "peft_config", {})
        weights = self.catalog.weights(settings, self.has_pusa)
        return sum(int(configs[name].r) for name, weight in weights.items() if weight != 0 and name in configs)

    def memory_note(self, settings: Settings) -> str:
        """What the LoRAs of ``settings`` add to a pass, for the memory line ("" without adapters)."""
        if not self._has_layers:
            return ""
        if self.merged:
            return "LoRAs merged into the weights: no pass computes a LoRA branch."
        return (f"LoRAs unmerged ({self.blocker}): each pass computes rank {self.active_rank(settings)} beside the "
                "weights, counted above.")

    def describe(self) -> str:
        if self.blocker is not None:
            return f"LoRAs unmerged ({self.blocker})"
        if self.pristine is None:
            return "no LoRA"
        return f"LoRAs merged into the weights; restored from {self.pristine.describe()}"

    def use(self, settings: Settings) -> None:
        """Make the transformer compute with the adapters and weights ``settings`` ask for."""
        self.apply(self.catalog.weights(settings, self.has_pusa))

    def apply(self, weights: Mapping[str, float]) -> None:
        """Compute ``W + sum(weight * B @ A)`` over exactly these adapters (weight 0: left out)."""
        wanted = {name: float(w) for name, w in weights.items() if w != 0}
        if wanted == self._active:
            return
        self._active = None  # until the change is complete: a failure part-way is redone by the next job
        self._restore()
        if wanted:
            self.transformer.enable_lora()
            self.transformer.set_adapters(list(wanted), list(wanted.values()))
            if self.pristine is not None:
                self._dirty = set(tuner_layers(self.transformer))  # recorded first: a failed merge is restored too
                self.transformer.fuse_lora(adapter_names=list(wanted))
        elif self._has_layers:
            self.transformer.disable_lora()
        self._active = wanted

    def _restore(self) -> None:
        """Put the pristine base weights back into every layer a merge may have changed."""
        if not self._dirty:
            return
        assert self.pristine is not None
        layers = tuner_layers(self.transformer)
        for name in self._dirty:
            if layers[name].merged:
                layers[name].unmerge()  # peft's bookkeeping; its subtraction is inexact, so the weights are overwritten next
        self.pristine.restore({f"{name}.weight": layers[name].get_base_layer().weight for name in self._dirty})
        self._dirty = set()
