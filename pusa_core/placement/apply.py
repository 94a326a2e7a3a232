"""Applying a placement to loaded components: accelerate's hooks for ``shard``, one device for
``single``, diffusers group offloading for ``offload`` (CUDA streams overlap the copies with
compute; optionally fp8 weight storage), float32 on the CPU for ``cpu``, and this rank's share
for ``cfg-parallel`` / ``sequence-parallel`` (the whole transformer on the rank's GPU; the text
encoder and the VAE on the one rank the plan gives them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from accelerate import dispatch_model
from diffusers.hooks import apply_group_offloading

from ..errors import PusaInputError
from .choose import Placement
from .layouts import PARALLEL_KINDS
from .loads import MemoryPlan
from .models import enable_fp8_storage


@dataclass(frozen=True)
class StageDevices:
    """Where each stage's inputs must be: token ids, latents / text states, latents to decode."""

    text_device: torch.device
    transformer_device: torch.device
    vae_device: torch.device


def dispatch_transformer(transformer: torch.nn.Module, device_map: Mapping[str, int | str],
                         offload_dir: str | Path | None = None) -> torch.device:
    """Split the transformer with accelerate hooks; returns the device of its patch embedding.

    ``force_hooks`` keeps the hooks even when the map names a single device, so the same path runs
    everywhere (every block's inputs are moved to the block's device).
    """
    dispatch_model(transformer, device_map=dict(device_map), offload_dir=offload_dir, force_hooks=True)
    return _execution_device(transformer.patch_embedding)


def _execution_device(module: torch.nn.Module) -> torch.device:
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return next(module.parameters()).device


def offload_transformer(transformer: torch.nn.Module, device: torch.device, use_stream: bool | None = None) -> None:
    """diffusers group offloading, one block per group; CUDA streams prefetch the next block."""
    use_stream = device.type == "cuda" if use_stream is None else use_stream
    transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                     offload_type="block_level", num_blocks_per_group=1, use_stream=use_stream)


def stream_text_encoder(text_encoder: torch.nn.Module, device: torch.device, use_stream: bool | None = None) -> None:
    """Group offloading of the text encoder leaf by leaf: only a layer or two is on the GPU at once."""
    use_stream = device.type == "cuda" if use_stream is None else use_stream
    apply_group_offloading(text_encoder, onload_device=device, offload_type="leaf_level", use_stream=use_stream)


def apply_placement(placement: Placement, transformer: torch.nn.Module, text_encoder: torch.nn.Module,
                    vae: torch.nn.Module, offload_dir: str | Path | None = None, rank: int | None = None) -> StageDevices:
    """Put loaded (bf16, or any dtype for cpu) components where the placement says.

    Under cfg-parallel and sequence-parallel each rank applies its own share: ``rank`` (default:
    this process's rank in torch.distributed's group) uses the plan's GPU of that index.
    """
    if placement.simulated:
        raise PusaInputError("gpus", "a plan for simulated GPUs cannot be applied; detect the real ones")
    plan = placement.memory
    if placement.kind in PARALLEL_KINDS:
        return _apply_rank(placement, transformer, text_encoder, vae, _rank(placement, rank))
    if placement.kind == "cpu":
        cpu = torch.device("cpu")
        for module in (transformer, text_encoder, vae):
            # float() rather than to(dtype): diffusers warns on to(dtype) even when nothing changes.
            module.to(cpu).float()
        return StageDevices(cpu, cpu, cpu)
    if placement.fp8:
        enable_fp8_storage(transformer)
    if placement.kind == "shard":
        transformer_device = dispatch_transformer(transformer, plan.device_map, offload_dir)
    elif placement.kind == "single":
        transformer_device = torch.device(plan.devices[0].device)
        transformer.to(transformer_device)
    else:
        transformer_device = torch.device(plan.devices[0].device)
        offload_transformer(transformer, transformer_device)
    text_device = torch.device(plan.text_device)
    if plan.text_streamed:
        stream_text_encoder(text_encoder, text_device)
    else:
        text_encoder.to(text_device)
    vae_device = torch.device(plan.vae_device)
    vae.to(vae_device)
    apply_vae_tiling(vae, plan)
    return StageDevices(text_device, transformer_device, vae_device)


def _rank(placement: Placement, rank: int | None) -> int:
    """This process's rank, which must name one of the placement's GPUs."""
    ranks = len(placement.gpus)
    if rank is None:
        if not torch.distributed.is_initialized():
            raise PusaInputError("placement", f"{placement.kind!r} runs one process per GPU and this process is not "
                                              f"one of them; start them with torchrun --nproc-per-node {ranks}")
        rank = torch.distributed.get_rank()
    if not 0 <= rank < ranks:
        raise PusaInputError("placement", f"rank {rank} has no GPU in this {ranks}-GPU {placement.kind} placement")
    return rank


def _apply_rank(placement: Placement, transformer: torch.nn.Module, text_encoder: torch.nn.Module,
                vae: torch.nn.Module, rank: int) -> StageDevices:
    """The whole transformer on this rank's GPU; the text encoder and the VAE only on the rank that runs them."""
    plan = placement.memory
    own = torch.device(plan.devices[rank].device)
    if placement.fp8:
        enable_fp8_storage(transformer)
    transformer.to(own)
    text_device, vae_device = torch.device(plan.text_device), torch.device(plan.vae_device)
    if text_device == own and plan.text_streamed:
        stream_text_encoder(text_encoder, own)
    elif text_device == own:
        text_encoder.to(own)
    if vae_device == own:
        vae.to(own)
        apply_vae_tiling(vae, plan)
    return StageDevices(text_device, own, vae_device)


def apply_vae_tiling(vae: torch.nn.Module, plan: MemoryPlan) -> None:
    """Tile the VAE decode for this job only when the plan says the untiled decode would not fit."""
    if plan.vae_tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
