"""Pusa LoRA: read every key layout in use, load it as a peft adapter, set alpha exactly.

Alpha is a plain multiplier on the trained delta, ``W + alpha * (B @ A)`` with no division by rank.
In peft terms the adapter is loaded with scale 1 (lora_alpha == r) and alpha is the adapter weight
given to ``set_adapters``, which *sets* the scale: changing alpha never accumulates.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError
from safetensors.torch import load_file

from .facts import DEFAULT_ALPHA
from .weights import SAFETENSORS_SUFFIX, lora_problems

ADAPTER_NAME = "pusa"

# One LoRA'd linear: "<module>.<lora_A|lora_B>[.<adapter>].weight" or kohya "<module>.<lora_down|lora_up>.weight".
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$")
_KOHYA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_down|lora_up)\.weight$")
_KOHYA_ALPHA = re.compile(r"^(?P<module>.+)\.alpha$")
_PREFIXES = ("diffusion_model.", "model.diffusion_model.", "transformer.", "base_model.model.")
# kohya / musubi-tuner write module names with their dots turned into underscores after this prefix.
_KOHYA_PREFIX = "lora_unet_"
# Wan's original names of the linear layers (what kohya / musubi underscore-join), per block and top level.
_WAN_BLOCK_LINEARS = tuple(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo") + (
    "cross_attn.k_img",
    "cross_attn.v_img",
    "ffn.0",
    "ffn.2",
)
_WAN_TOP_LINEARS = (
    "text_embedding.0",
    "text_embedding.2",
    "time_embedding.0",
    "time_embedding.2",
    "time_projection.1",
    "head.head",
)


class LoraFormatError(ValueError):
    """The LoRA file cannot be used with this transformer; the message names the file or key and says why."""


def read_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a LoRA state dict from ``.safetensors`` or a torch zip file (``.pt``/``.pth``/``.bin``).

    Torch files are memory-mapped, so reading costs no host memory until a tensor is used.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    if problems := lora_problems(path):
        raise LoraFormatError(problems[0])
    try:
        if path.suffix.lower() == SAFETENSORS_SUFFIX:
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise LoraFormatError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LoraFormatError(f"{path}: does not hold a flat dict of tensors")
    return state


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _own_modules(transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The transformer's modules by name; a layer peft already wraps counts as its base layer."""
    modules: dict[str, torch.nn.Module] = {}
    inside_tuner = None
    for name, module in transformer.named_modules():  # pre-order: a wrapper's internals follow it
        if inside_tuner is not None and name.startswith(inside_tuner):
            continue
        if isinstance(module, BaseTunerLayer):
            inside_tuner = f"{name}."
            module = module.get_base_layer()
        modules[name] = module
    return modules


def _wan_to_diffusers(module: str) -> str:
    """Original Wan module names (``blocks.0.self_attn.q``) -> diffusers names (``blocks.0.attn1.to_q``)."""
    # diffusers' own checkpoint converter knows Wan's renames; reuse it on a dummy weight key.
    converted = convert_wan_transformer_to_diffusers({f"{module}.weight": torch.empty(0)})
    return next(iter(converted))[: -len(".weight")]


class _ModuleNames:
    """Resolves a LoRA file's module name to this transformer's module name.

    Accepted: the transformer's own (diffusers) names, Wan's original dotted names, and either of
    them underscore-joined after ``lora_unet_`` (kohya / musubi-tuner). The underscore lookup is built
    from the transformer's real modules, so it never guesses where a dot was.
    """

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.modules = modules
        self.linears = {n for n, m in modules.items() if isinstance(m, torch.nn.Linear)}
        blocks = {n.split(".")[1] for n in modules if re.fullmatch(r"blocks\.\d+", n)}
        wan = [f"blocks.{b}.{t}" for b in blocks for t in _WAN_BLOCK_LINEARS] + list(_WAN_TOP_LINEARS)
        candidates = {n: n for n in modules if n} | {w: d for w in wan if (d := _wan_to_diffusers(w)) in self.linears}
        self.underscored: dict[str, set[str]] = {}
        for name, target in candidates.items():
            self.underscored.setdefault(name.replace(".", "_"), set()).add(target)

    def resolve(self, module: str) -> str | None:
        """This transformer's name for ``module``, or None when it has no such module."""
        if module.startswith(_KOHYA_PREFIX):
            targets = self.underscored.get(module[len(_KOHYA_PREFIX) :], set())
            if len(targets) > 1:
                raise LoraFormatError(f"{module!r} matches several modules of this transformer: {sorted(targets)}")
            return next(iter(targets), None)
        # A linear layer's diffusers name is never a Wan original name of another linear layer.
        if module in self.linears:
            return module
        converted = _wan_to_diffusers(module)
        return converted if converted in self.modules else None


def _check_finite(key: str, tensor: torch.Tensor) -> None:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    # min and max propagate NaN and +-inf; one pass without a temporary, ~25x faster than isfinite() on bf16.
    low, high = torch.aminmax(tensor)
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise LoraFormatError(f"{key}: holds NaN or infinite values; the file is damaged or its training diverged")


def _collect(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """(module -> {"A": down, "B": up}, module -> kohya alpha) under the file's own module names."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    unknown = []
    for raw_key, tensor in state_dict.items():
        key = _strip_prefix(raw_key)
        if m := _PEFT_KEY.match(key) or _KOHYA_KEY.match(key):
            _check_finite(raw_key, tensor)
            pairs.setdefault(m["module"], {})["A" if m["part"] in ("lora_A", "lora_down") else "B"] = tensor
        elif m := _KOHYA_ALPHA.match(key):
            _check_finite(raw_key, tensor)
            if tensor.numel() != 1:
                raise LoraFormatError(f"{raw_key}: an alpha holds one number, found shape {tuple(tensor.shape)}")
            alphas[m["module"]] = float(tensor)
        else:
            unknown.append(raw_key)
    if unknown:
        raise LoraFormatError(
            f"{len(unknown)} keys are not LoRA weights (e.g. {unknown[0]!r}); expected "
            "'<module>.lora_A[.default].weight', '<module>.lora_down.weight' or '<module>.alpha'"
        )
    if not pairs:
        raise LoraFormatError("the file holds no LoRA weights")
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise LoraFormatError(f"{module}: has only lora_{'A' if 'A' in ab else 'B'}; both halves are needed")
    return pairs, alphas


def _check_shapes(module: str, target: str, layer: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
    """A must be (rank, in_features) and B (out_features, rank) of the linear layer ``target``."""
    if not isinstance(layer, torch.nn.Linear):
        raise LoraFormatError(f"{module}: {target} is a {type(layer).__name__}; a LoRA adapts only linear layers")
    rank = a.shape[0] if a.ndim else 0
    need_a, need_b = (rank, layer.in_features), (layer.out_features, rank)
    where = f"{target} is a Linear({layer.in_features} -> {layer.out_features})"
    if tuple(a.shape) != need_a:
        raise LoraFormatError(f"{module}: lora_A has shape {tuple(a.shape)}, but {where} and needs {need_a}")
    if tuple(b.shape) != need_b:
        raise LoraFormatError(f"{module}: lora_B has shape {tuple(b.shape)}, but {where} and needs {need_b}")


def to_diffusers_lora(state_dict: dict[str, torch.Tensor], transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Normalize any supported layout to ``<diffusers module>.lora_A.weight`` / ``.lora_B.weight`` at scale 1.

    Supported: the Pusa training layout (``blocks.0.self_attn.q.lora_A.default.weight``), the same with a
    ``diffusion_model.`` prefix, kohya ``lora_down``/``lora_up`` with optional ``.alpha`` (scale alpha/rank,
    folded into B here) under dotted or underscore names (``lora_unet_blocks_0_self_attn_q``), and
    diffusers-native keys (optionally prefixed ``transformer.``). Every module must exist in
    ``transformer`` as a linear layer of matching shape, and every value must be finite.
    """
    pairs, alphas = _collect(state_dict)
    names = _ModuleNames(_own_modules(transformer))
    targets = {module: names.resolve(module) for module in pairs}
    missing = sorted(module for module, target in targets.items() if target is None)
    if missing:
        raise LoraFormatError(
            f"{len(missing)} LoRA modules do not exist in this transformer (e.g. {missing[0]!r}): "
            "the LoRA was trained for a different model"
        )
    out: dict[str, torch.Tensor] = {}
    for module, ab in pairs.items():
        target, a, b = targets[module], ab["A"], ab["B"]
        _check_shapes(module, target, names.modules[target], a, b)
        if module in alphas:
            b = b * (alphas[module] / a.shape[0])
        out[f"{target}.lora_A.weight"] = a
        out[f"{target}.lora_B.weight"] = b
    return out


def lora_modules(transformer: torch.nn.Module, adapter_name: str = ADAPTER_NAME) -> set[str]:
    """Names of the modules that carry ``adapter_name``."""
    return {
        name
        for name, module in transformer.named_modules()
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and adapter_name in module.lora_A
    }


@contextmanager
def _naming_file(path: Path | None) -> Iterator[None]:
    """Prefix a LoraFormatError raised inside with the file it is about."""
    try:
        yield
    except LoraFormatError as exc:
        if path is None:
            raise
        raise LoraFormatError(f"{path}: {exc}") from exc


def load_lora(
    transformer: torch.nn.Module,
    source: str | Path | dict[str, torch.Tensor],
    alpha: float = DEFAULT_ALPHA,
    adapter_name: str = ADAPTER_NAME,
) -> set[str]:
    """Load a LoRA into ``transformer`` as the peft adapter ``adapter_name`` at ``alpha``; return its modules.

    Fails loudly when any module named in the file did not get an adapter (diffusers' own loader
    silently loads nothing for some layouts).
    """
    path = Path(source) if isinstance(source, (str, Path)) else None
    state = read_lora_file(path) if path is not None else source
    with _naming_file(path):
        converted = to_diffusers_lora(state, transformer)
        expected = {key[: -len(".lora_A.weight")] for key in converted if key.endswith(".lora_A.weight")}
        if adapter_name in getattr(transformer, "peft_config", {}):
            transformer.delete_adapters(adapter_name)
        # low_cpu_mem_usage: peft builds the LoRA layers empty and takes these tensors as they are,
        # instead of random-initialising every matrix (rank 512 for Pusa) only to overwrite it.
        transformer.load_lora_adapter(converted, prefix=None, adapter_name=adapter_name, low_cpu_mem_usage=True)
        loaded = lora_modules(transformer, adapter_name)
        if loaded != expected:
            absent = sorted(expected - loaded)
            raise LoraFormatError(f"the LoRA did not attach to {len(absent)} modules (e.g. {absent[0]!r})")
    set_lora_alpha(transformer, alpha, adapter_name)
    return loaded


def set_lora_alpha(transformer: torch.nn.Module, alpha: float, adapter_name: str = ADAPTER_NAME) -> None:
    """Set the LoRA multiplier to exactly ``alpha`` (never relative to the previous value)."""
    transformer.set_adapters([adapter_name], weights=[float(alpha)])
