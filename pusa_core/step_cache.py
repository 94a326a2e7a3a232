"""Step caching with diffusers' own cache hooks, on Pusa's per-frame-timestep transformer.

Each of diffusers' hooks (``diffusers/hooks/``, 0.42.1) was run on the small model through
:func:`~pusa_core.sampling.sample`. Two work with a ``[B, F]`` timestep, because neither reads it:

* **first-block** (``FirstBlockCacheConfig``): runs the first block; when its residual changed by
  less than ``threshold`` (relative mean) since the last full pass of the same guidance branch, the
  other blocks are skipped and their cached residual is added. The per-frame modulation of the first
  block and of the output head still sees this step's timesteps.
* **taylorseer** (``TaylorSeerCacheConfig``, lite mode): every ``interval`` steps the pass runs in
  full; in between, the output projection is extrapolated (first order, from the last two full
  passes) and the blocks are not run. Warm-up steps and the last step always run in full. Lite mode
  keeps one ``tokens x 64`` tensor per factor; the full mode would keep every block's attention and
  FFN outputs (tens of GB on the 14B).

Not offered, with why:

* MagCache needs magnitude ratios calibrated for the checkpoint and schedule (none exist for Pusa's
  LoRA and per-frame schedule; ratios calibrated on the small model say nothing of the 14B).
* Pyramid Attention Broadcast and FasterCache decide by one scalar ``current_timestep_callback()``;
  Pusa's frames each have their own (a conditioning frame sits at ``m x sigma``). FasterCache also
  assumes the conditional and unconditional inputs are concatenated in one batch, which Pusa's
  sampler never does (it raised ``IndexError`` here).
* SeaCache needs one scalar ``sigma`` per step in ``cache_context``; without it it runs no cache.

The hooks keep their state per guidance branch: :func:`~pusa_core.sampling.guided_velocity` wraps
each pass in ``transformer.cache_context("cond"/"uncond")`` while a cache is on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

from . import facts
from .cache_choice import StepCache
from .transformer import PusaTransformer3DModel, PusaTransformerBlock

# diffusers finds a block's output layout by its exact class: Pusa's block returns hidden states alone, as Wan's does.
TransformerBlockRegistry.register(PusaTransformerBlock, TransformerBlockMetadata(return_hidden_states_index=0))


@dataclass
class PassCount:
    """Transformer passes of a job, and how many of them ran the whole block stack."""

    passes: int = 0
    full: int = 0

    @property
    def skipped(self) -> int:
        """Passes whose blocks (all but the first, for first-block) were not run."""
        return self.passes - self.full


def cache_config(cache: StepCache, steps: int) -> FirstBlockCacheConfig | TaylorSeerCacheConfig:
    """diffusers' config for ``cache`` in a job of ``steps`` steps."""
    if cache.kind == facts.FIRST_BLOCK:
        return FirstBlockCacheConfig(threshold=cache.threshold)
    if cache.kind == facts.TAYLORSEER:
        return TaylorSeerCacheConfig(
            cache_interval=int(cache.threshold),
            disable_cache_before_step=facts.TAYLORSEER_WARMUP_STEPS,
            disable_cache_after_step=steps - 1,  # the last step lands the video: never extrapolated
            taylor_factors_dtype=torch.float32,
            use_lite_mode=True,
        )
    raise ValueError(f"unknown step cache {cache.kind!r}; expected one of {facts.STEP_CACHE_KINDS}")


@contextmanager
def step_caching(transformer: PusaTransformer3DModel, cache: StepCache | None, steps: int) -> Iterator[PassCount]:
    """Turn ``cache`` on for one job (None: off) and count the passes and the full ones.

    A pass is counted at the patch embedding (every pass runs it); a full one at the last block's
    feed-forward, which only a pass that runs the last block reaches.
    """
    count = PassCount()

    def on_pass(*_: object) -> None:
        count.passes += 1

    def on_full(*_: object) -> None:
        count.full += 1

    hooks = [
        transformer.patch_embedding.register_forward_hook(on_pass),
        transformer.blocks[-1].ffn.register_forward_hook(on_full),
    ]
    if cache is not None:
        transformer.enable_cache(cache_config(cache, steps))
    try:
        yield count
    finally:
        if cache is not None:
            transformer.disable_cache()
        for hook in hooks:
            hook.remove()
