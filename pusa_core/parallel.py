"""Several ranks share each denoising step: one guidance pass per rank, or a slice of the tokens per rank.

Placements (``world size = cfg degree x sequence degree``):

* **cfg-parallel** (cfg degree 2): every rank holds the whole transformer; the rank at cfg
  coordinate 0 runs the conditional pass, coordinate 1 the unconditional one. The two outputs meet
  in one all-gather per step (in the transformer's dtype, so nothing is rounded that the
  single-process sampler would not round), and every rank applies the same guidance formula and
  Euler step, so every rank keeps identical latents. At cfg 1 there is no second pass: refused.
* **sequence-parallel** (sequence degree N > 1): diffusers' context parallelism (Ulysses) splits
  the tokens of every pass across N ranks with :class:`~pusa_core.transformer.PusaTransformer3DModel`'s
  own plan; the output is gathered whole on every rank.
* both: 2 cfg groups x N sequence ranks (4 GPUs: 2 x 2).

Ring attention is not offered: diffusers runs it only on attention backends that return the
log-sum-exp (flash, sage, cuDNN: CUDA-only), and the native backend refuses
(``models/attention_dispatch.py:3744`` in diffusers 0.42.1).

Stopping together: a rank that is cancelled, runs out of time or raises must not leave the others
waiting in a collective. Each rank keeps its first stop instead of raising it, and the ranks agree
on a code (0 none, 1 cancelled, 2 timed out, 3 failed; the highest wins) at fixed points:

* cfg-parallel: the code rides in the step's all-gather (one more element), so a stop before the
  step, in the rank's pass, or in the previous step's callback ends the step on every rank;
* sequence-parallel: a 1-element all-reduce before every pass (and after the cfg all-gather in the
  2 x N placement), since no rank may enter a pass whose collectives the others will not join;
* after the last step, one all-reduce (a stop in the last callback).

When the agreed code is not 0, the ranks exchange messages (``all_gather_object``) and every rank
raises: the stopping rank its own exception, the others :class:`GenerationCancelled` or
:class:`JobTimedOut` with its message, or :class:`RankFailed` naming it. The group is then in step
and ready for the next job. An exception inside a sequence-parallel pass cannot be agreed on (the
other ranks are inside that pass's collectives): that rank raises :class:`RanksOutOfStep`, and so
does every other rank when its collective fails (the failed rank's connections close, or the
group's timeout, :func:`init_group`, passes); the ranks must then be restarted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .errors import GenerationCancelled, JobTimedOut, PusaInputError
from .sampling import StopCheck, branch_context, combine_guidance, guided_velocity
from .transformer import PusaTransformer3DModel

# How long a collective waits for the other ranks before it fails: a dead rank becomes an error.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)
MESH_DIMS = ("cfg", "ring", "ulysses")
_NONE, _CANCELLED, _TIMED_OUT, _FAILED = 0, 1, 2, 3


class RankFailed(RuntimeError):
    """Another rank raised during this job; every rank ended the job."""


class RanksOutOfStep(RuntimeError):
    """A pass with collectives failed on this rank, so the ranks are no longer in step: restart them all."""


def init_group(
    init_method: str = "env://",
    rank: int | None = None,
    world_size: int | None = None,
    timeout: timedelta = COLLECTIVE_TIMEOUT,
) -> torch.device:
    """Join the job's process group and return this rank's device.

    NCCL with GPU ``LOCAL_RANK`` where CUDA is available, gloo on the CPU otherwise. Under torchrun
    the environment gives rank and world size; tests pass a ``tcp://`` address and both.
    """
    ids = {"rank": -1 if rank is None else rank, "world_size": -1 if world_size is None else world_size}
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method=init_method, timeout=timeout, device_id=device, **ids)
        return device
    dist.init_process_group("gloo", init_method=init_method, timeout=timeout, **ids)
    return torch.device("cpu")


def parallel_mesh(device_type: str, cfg_degree: int, sequence_degree: int) -> DeviceMesh:
    """The ``(cfg, ring, ulysses)`` mesh over every rank; built here, so it works on the CPU too."""
    world = dist.get_world_size()
    if cfg_degree not in (1, 2) or sequence_degree < 1 or cfg_degree * sequence_degree != world or world < 2:
        raise ValueError(
            f"cfg degree {cfg_degree} (1 or 2) x sequence degree {sequence_degree} must equal the "
            f"{world} ranks of the group, and be at least 2"
        )
    return init_device_mesh(device_type, (cfg_degree, 1, sequence_degree), mesh_dim_names=MESH_DIMS)


def enable_sequence_parallel(transformer: PusaTransformer3DModel, mesh: DeviceMesh) -> None:
    """Split every pass's tokens over the mesh's ``ulysses`` ranks with diffusers' Ulysses attention."""
    degree, heads = mesh["ulysses"].size(), transformer.config.num_attention_heads
    padded_heads = -(-heads // degree) * degree
    # diffusers' "anything" mode pads the heads when the degree does not divide them (40 heads over
    # 3 ranks), but only up to fewer padding heads than each rank holds.
    if padded_heads - heads >= padded_heads // degree:
        raise ValueError(f"{degree} sequence ranks cannot share {heads} attention heads; use fewer ranks, or a number that divides {heads}")
    config = ContextParallelConfig(ulysses_degree=degree, ulysses_anything=heads % degree != 0, mesh=mesh)
    transformer.enable_parallelism(config=config)


def parallel_guidance(
    transformer: PusaTransformer3DModel, cfg_degree: int, sequence_degree: int
) -> CfgParallel | SequenceParallel:
    """Set ``transformer`` up for the placement and return the guidance :func:`~pusa_core.sampling.sample` takes.

    Every rank calls this with the same arguments, after :func:`init_group`.
    """
    mesh = parallel_mesh(transformer.device.type, cfg_degree, sequence_degree)
    if sequence_degree > 1:
        enable_sequence_parallel(transformer, mesh)
    if cfg_degree == 1:
        return SequenceParallel(transformer.device)
    return CfgParallel(transformer.device, mesh["cfg"], sequence_ranks=sequence_degree > 1)


def _code(error: BaseException | None) -> int:
    if error is None:
        return _NONE
    if isinstance(error, GenerationCancelled):
        return _CANCELLED
    return _TIMED_OUT if isinstance(error, JobTimedOut) else _FAILED


class _Team:
    """The ranks of one job: a stop on any of them becomes the same stop on all of them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.failure: Exception | None = None  # this rank's first stop, not yet agreed on
        self.agreed_stop: Exception | None = None  # the last exception :meth:`stop` raised here

    def attempt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, unless this rank has stopped; an exception is kept, not raised."""
        if self.failure is None:
            try:
                return fn(*args)
            except Exception as error:  # every kind must reach the other ranks
                self.failure = error
        return None

    def agree(self) -> None:
        """Every rank: the highest stop code of all ranks, raised on all of them (nothing if none stopped)."""
        code = torch.tensor([_code(self.failure)], device=self.device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        self.stop(int(code))

    def stop(self, agreed: int) -> None:
        """Raise the agreed stop on this rank; every rank calls this with the same ``agreed``."""
        if agreed == _NONE:
            return
        own, self.failure = self.failure, None
        reports: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(reports, (_code(own), f"{type(own).__name__}: {own}", str(own)))
        rank = next(r for r, report in enumerate(reports) if report[0] == agreed)
        _, described, message = reports[rank]
        if rank == dist.get_rank():
            self.agreed_stop = own
        elif agreed == _CANCELLED:
            self.agreed_stop = GenerationCancelled(message)
        elif agreed == _TIMED_OUT:
            self.agreed_stop = JobTimedOut(message)
        else:
            self.agreed_stop = RankFailed(f"rank {rank} of {len(reports)} failed, so every rank stopped this job: {described}")
        raise self.agreed_stop

    @staticmethod
    def out_of_step(error: Exception) -> RanksOutOfStep:
        """What an exception inside a pass whose collectives other ranks share becomes.

        The other ranks stop too: at a collective's error when this rank's connections close, or at
        the group's timeout.
        """
        return RanksOutOfStep(
            f"a sequence-parallel pass failed on rank {dist.get_rank()}, inside collectives the other ranks "
            f"share, so the ranks are out of step; restart all ranks: {type(error).__name__}: {error}"
        )

    def after_step(self, callback: Callable[[], None]) -> None:
        self.attempt(callback)

    def finish(self) -> None:
        self.agree()


class CfgParallel(_Team):
    """Guidance with the conditional pass on cfg rank 0 and the unconditional pass on cfg rank 1."""

    def __init__(self, device: torch.device, cfg_mesh: DeviceMesh, sequence_ranks: bool = False) -> None:
        super().__init__(device)
        self.group = cfg_mesh.get_group()
        self.branch = cfg_mesh.get_local_rank()  # 0: conditional, 1: unconditional
        # With sequence ranks too, the all-gather reaches only this rank's cfg partner, and no rank
        # may start a pass its sequence partners will not join: all ranks agree before and after.
        self.sequence_ranks = sequence_ranks

    def velocity(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor | None,
        cfg: float,
        check: StopCheck,
    ) -> torch.Tensor:
        if cfg == 1.0:
            raise PusaInputError(
                "cfg", "cfg-parallel runs the unconditional pass on a second GPU, and at cfg 1 there is none; "
                "raise cfg above 1, or use the sequence-parallel placement, which is the one for cfg 1"
            )
        if negative is None:
            raise ValueError("cfg-parallel needs the negative prompt's embedding for its unconditional pass")
        dtype = transformer.dtype
        context = (positive, negative)[self.branch].to(dtype)

        def run_pass() -> torch.Tensor:
            with branch_context(transformer, ("cond", "uncond")[self.branch]):
                return transformer(latents.to(dtype), timestep, context, return_dict=False)[0]

        self.attempt(check, "before")
        if self.sequence_ranks:
            self.agree()
            try:
                mine = run_pass()
            except Exception as error:
                raise self.out_of_step(error) from error
        else:
            mine = self.attempt(run_pass)
        if mine is None:  # this rank stopped: send its code, with zeros for the pass it did not run
            mine = torch.zeros(latents.shape, dtype=dtype, device=latents.device)
        return combine_guidance(*self._exchange(mine), cfg)

    def _exchange(self, mine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both passes' outputs (as float32) on both ranks, in one all-gather that also carries the stop codes."""
        sent = torch.cat([mine.flatten(), torch.tensor([_code(self.failure)], dtype=mine.dtype, device=mine.device)])
        both = torch.empty(2 * sent.numel(), dtype=sent.dtype, device=sent.device)
        dist.all_gather_single(both, sent, group=self.group)
        both = both.view(2, -1)
        if self.sequence_ranks:
            self.agree()
        else:
            self.stop(int(both[:, -1].max()))
        pos, neg = (row[:-1].view(mine.shape).float() for row in both)
        return pos, neg


class SequenceParallel(_Team):
    """Guidance with every pass's tokens split across the ranks (the transformer has context parallelism)."""

    def velocity(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor | None,
        cfg: float,
        check: StopCheck,
    ) -> torch.Tensor:
        def agreed(where: str) -> None:
            self.attempt(check, where)
            self.agree()

        agreed("before")
        try:
            return guided_velocity(transformer, latents, timestep, positive, negative, cfg,
                                   between_passes=lambda: agreed("during"))
        except Exception as error:
            if error is self.agreed_stop:
                raise
            raise self.out_of_step(error) from error
