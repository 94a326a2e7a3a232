"""Where each component goes under each placement kind, filled into a memory plan.

- ``shard``: the transformer's blocks split over the GPUs by accelerate (balanced, a block is never
  split); the text encoder and the VAE go where there is room.
- ``single`` / ``cpu``: the whole job on one device (the GPU with the most room, or the host's RAM).
- ``offload``: the blocks stream from pinned host memory to one GPU, a few at a time.
- ``cfg-parallel`` / ``sequence-parallel``: one process per GPU, each holding the whole transformer
  (:mod:`pusa_core.parallel`). cfg-parallel: two guidance groups, each GPU runs one of a step's two
  passes (with 4 GPUs, 2 groups x 2 sequence ranks); sequence-parallel: every GPU runs 1/N of every
  pass's tokens. The text encoder and the VAE run on one rank: the first one where they fit, the
  text encoder streamed layer by layer (so nothing of it stays) when no rank has room for it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
from accelerate import infer_auto_device_map
from accelerate.utils import get_balanced_memory

from .devices import Gpu, Host
from .loads import DeviceLoad, MemoryPlan
from .models import ComponentSizes, MetaModels, module_bytes

PARALLEL_KINDS = ("cfg-parallel", "sequence-parallel")
KINDS = ("shard", "single", "offload", "cpu") + PARALLEL_KINDS
# Group offloading keeps the running block, the prefetched next one and the one being released.
OFFLOAD_RESIDENT_BLOCKS = 3
STREAMED_TEXT_LAYERS = 2


def parallel_degrees(kind: str, ranks: int) -> tuple[int, int]:
    """``(cfg degree, sequence degree)`` of ``kind`` over ``ranks`` processes; (1, 1) for one-process kinds."""
    if kind == "cfg-parallel":
        return 2, ranks // 2
    if kind == "sequence-parallel":
        return 1, ranks
    return 1, 1


def lay_out(plan: MemoryPlan, gpus: Sequence[Gpu], models: MetaModels, device_map: Mapping[str, int | str] | None,
            simulated: bool) -> None:
    """Fill ``plan.devices`` (and where the text encoder and VAE go) for ``plan.kind``."""
    if plan.kind in PARALLEL_KINDS:
        _plan_parallel(plan, gpus)
    elif plan.kind == "shard":
        _plan_shard(plan, list(gpus), models, device_map, simulated)
    elif plan.kind == "offload":
        _plan_offload(plan, _gpu_load(gpus))
    elif plan.kind == "single":
        _plan_whole(plan, _gpu_load(gpus))
    else:
        assert plan.host is not None  # plan_memory reads it for cpu plans
        ranks = plan.cfg_degree * plan.sequence_degree
        _plan_whole(plan, _host_load(plan.host, plan.sizes, ranks), ", float32" + (f", one of {ranks} processes" if ranks > 1 else ""))


def _gpu_load(gpus: Sequence[Gpu]) -> DeviceLoad:
    """The GPU with the most room, for the kinds that use one."""
    gpu = max(gpus, key=lambda g: g.budget)
    return DeviceLoad(gpu.device, gpu.name, gpu.budget)


def _host_load(host: Host, sizes: ComponentSizes, ranks: int) -> DeviceLoad:
    """One process's share of the RAM: ``ranks`` processes on the machine each hold a whole copy."""
    # Weights already loaded are not in ``available`` any more; the plan counts them in its peak.
    loaded = sizes.transformer + sizes.lora + sizes.text_encoder + sizes.vae if host.holds_weights else 0
    return DeviceLoad("cpu", host.name, host.budget // ranks + loaded)


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


def _place_vae(plan: MemoryPlan, loads: list[DeviceLoad], prefer: DeviceLoad | None = None) -> None:
    """The VAE on the device with the most room for its decode (``prefer`` when it has enough);
    tiled only when untiled would not fit."""
    acts, vae = plan.activations, plan.sizes.vae

    def room(d: DeviceLoad) -> int:
        return d.budget - d.resident - vae - acts.sampler

    for tiled, need in ((False, acts.vae_decode), (True, acts.vae_decode_tiled)):
        fitting = [d for d in loads if room(d) >= need]
        if fitting:
            home = prefer if prefer in fitting else max(fitting, key=room)
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
    _place_text(plan, ordered)
    _place_vae(plan, ordered)
    plan.devices = ordered + ([spill] if spill.weights else [])


def _place_text(plan: MemoryPlan, loads: list[DeviceLoad]) -> None:
    """The text encoder resident on the GPU with the most spare room (the first of equals), streamed
    layer by layer when none has room for all of it."""
    sizes, acts = plan.sizes, plan.activations

    def spare(d: DeviceLoad) -> int:
        return d.budget - d.resident - max(d.stages.values(), default=0)

    resident = [d for d in loads if spare(d) >= sizes.text_encoder + acts.text_encode]
    if resident:
        _text_stage(plan, max(resident, key=spare), streamed=False)
    else:
        _text_stage(plan, max(loads, key=spare), streamed=True)


def _plan_parallel(plan: MemoryPlan, gpus: Sequence[Gpu]) -> None:
    """One rank per GPU, each with every block; the text encoder and the VAE on one rank."""
    sizes, acts = plan.sizes, plan.activations
    denoise = acts.transformer + acts.sampler + (acts.cfg_exchange if plan.cfg_degree > 1 else 0)
    loads = []
    for rank, gpu in enumerate(gpus):
        load = DeviceLoad(gpu.device, gpu.name, gpu.budget)
        load.blocks = tuple(range(sizes.num_blocks))
        load.weights = {"transformer": sizes.transformer, "lora": sizes.lora}
        load.stages["denoise"] = denoise
        load.notes.append(f"rank {rank}: all {sizes.num_blocks} blocks, {_role(plan, rank)}")
        loads.append(load)
    _place_text(plan, loads)
    text_rank = next(d for d in loads if d.device == plan.text_device)
    _place_vae(plan, loads, prefer=text_rank)
    plan.devices = loads


def _role(plan: MemoryPlan, rank: int) -> str:
    """What ``rank`` computes each step: its guidance pass and its share of the tokens."""
    passes = ("conditional pass", "unconditional pass")
    group, member = divmod(rank, plan.sequence_degree)
    tokens = f"tokens {member + 1}/{plan.sequence_degree}" if plan.sequence_degree > 1 else ""
    if plan.cfg_degree == 1:
        return f"{tokens} of every pass"
    return f"{passes[group]}, {tokens}" if tokens else passes[group]


def _plan_whole(plan: MemoryPlan, load: DeviceLoad, note: str = "") -> None:
    """Every component resident on the one device ``load`` stands for; ``note`` adds to its block note."""
    sizes, acts = plan.sizes, plan.activations
    load.blocks = tuple(range(sizes.num_blocks))
    load.weights = {"transformer": sizes.transformer, "lora": sizes.lora}
    load.stages["denoise"] = acts.transformer + acts.sampler
    load.notes.append(f"all {sizes.num_blocks} blocks{note}")
    _text_stage(plan, load, streamed=False)
    _place_vae(plan, [load])
    plan.devices = [load]


def _plan_offload(plan: MemoryPlan, load: DeviceLoad) -> None:
    """The blocks on the host, streamed to ``load``'s GPU a few at a time; the text encoder streamed too."""
    sizes, acts = plan.sizes, plan.activations
    window = min(OFFLOAD_RESIDENT_BLOCKS, sizes.num_blocks)
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
