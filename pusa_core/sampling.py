"""The Pusa denoising loop: per-frame sigmas, classifier-free guidance, Euler steps.

Kept deliberately small so it can be read against the reference line by line. Latents stay float32;
only the transformer's input is cast to its dtype.

Schedule: frame f with noise multiplier m_f is at sigma ``m_f * s_i`` at step i, always; the
transformer is told timestep ``1000 * m_f * s_i`` and the Euler step moves the frame from
``m_f * s_i`` to ``m_f * s_(i+1)``. The reference (``FlowMatchSchedulerPusaV2V.step``) instead looks
the step's sigma up from the largest frame timestep, then scales it by m_f. While any frame has
m = 1 that lookup finds s_i and both rules are the same (every golden case, every job with a frame
left to generate). When every frame is conditioned with m < 1 the lookup lands on a later step j
(s_j nearest ``max(m) * s_i``), so the reference noises the frames at ``m * s_j`` and integrates
from ``m * s_j`` to ``m * s_(j+1)`` while telling the model ``m * s_i``; steps repeat or skip, and the frames' sigmas no longer add
up to the noise they started with. We keep ``m_f * s_i``: every frame's noise level matches the
timestep the model sees, and every frame reaches sigma 0 at the last step. On the golden tiny
configuration, every frame conditioned at m = 0.5, the final latents of the two rules differ by up
to 1.70 at 4 steps and 2.10 at 10 (``python benchmarks/all_conditioned_sigma.py [--steps 10]``):
at 4 steps the reference repeats its last step four times, overshooting sigma 0.

When every frame has m = 0 nothing can move, so the transformer is not run and the clean
conditioning latents are returned as they are.

Stopping: ``cancel`` and an optional :class:`Deadline` are checked before every step and between
the two classifier-free-guidance passes of a step, so a long step is left before its second pass.

Guidance: a :class:`Guidance` computes each step's velocity. :class:`LocalGuidance` runs both passes
here; ``pusa_core.parallel`` has the ones that share a step across ranks (a pass per rank, or a
slice of the tokens per rank). Those also turn a stop on any rank (cancel, time limit, an error)
into the same stop on every rank, so the loop below is the same for all of them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from .errors import GenerationCancelled, JobTimedOut
from .facts import DEFAULT_SHIFT, MAX_JOB_SECONDS_FLAG
from .schedule import frame_sigmas, frame_timesteps, noised_conditioning, shifted_sigmas


@dataclass(frozen=True)
class StepReport:
    """What the loop tells its caller after each step."""

    step: int  # steps finished so far, 1-based
    total: int
    latents: torch.Tensor
    seconds: float  # since the loop started
    denoised: torch.Tensor  # this step's estimate of the clean latents, x - sigma * v (what a preview shows)


StepCallback = Callable[[StepReport], None]


@dataclass(frozen=True)
class Deadline:
    """A job's time limit: ``seconds`` after ``start`` on ``clock`` (injectable, so tests need no timing)."""

    seconds: float
    start: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def starting_now(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(seconds, clock(), clock)

    def check(self, done: int, total: int) -> None:
        """Raise :class:`JobTimedOut` once the limit is reached; ``done`` of ``total`` steps have run."""
        if self.clock() - self.start >= self.seconds:
            raise JobTimedOut(
                f"this job ran past the {self.seconds:g} s limit set by {MAX_JOB_SECONDS_FLAG} and was stopped "
                f"after step {done} of {total}; nothing was saved; lower the size, frames or steps"
            )


@dataclass(frozen=True)
class SampleResult:
    latents: torch.Tensor
    seconds: float
    step_seconds: tuple[float, ...]


def initial_latents(
    noise: torch.Tensor, cond_latents: Mapping[int, torch.Tensor], multipliers: torch.Tensor
) -> torch.Tensor:
    """Noise everywhere; conditioning slots start from their clean latent noised by their multiplier."""
    latents = noise.clone()
    for index, clean in cond_latents.items():
        latents[:, :, index : index + 1] = noised_conditioning(
            clean.to(noise), noise[:, :, index : index + 1], float(multipliers[index])
        )
    return latents


def guided_velocity(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    cfg: float,
    between_passes: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``neg + cfg * (pos - neg)`` for every frame; one pass when cfg == 1 or there is no negative.

    ``between_passes`` runs after the positive pass when a negative pass follows (it may raise to stop).
    """
    dtype = transformer.dtype
    x = latents.to(dtype)
    with branch_context(transformer, "cond"):
        pos = transformer(x, timestep, positive.to(dtype), return_dict=False)[0].float()
    if cfg == 1.0 or negative is None:
        return pos
    if between_passes is not None:
        between_passes()
    with branch_context(transformer, "uncond"):
        neg = transformer(x, timestep, negative.to(dtype), return_dict=False)[0].float()
    return combine_guidance(pos, neg, cfg)


def branch_context(transformer: torch.nn.Module, branch: str) -> contextlib.AbstractContextManager[None]:
    """diffusers' ``cache_context`` for a guidance branch while a step cache is on (its hooks keep
    state per branch and refuse to run without one); nothing otherwise."""
    if getattr(transformer, "is_cache_enabled", False):
        return transformer.cache_context(branch)
    return contextlib.nullcontext()


def combine_guidance(pos: torch.Tensor, neg: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance of the two passes' float32 velocities."""
    return neg + cfg * (pos - neg)


StopCheck = Callable[[str], None]  # raises to stop; the argument says where: "before" or "during" the step


class Guidance(Protocol):
    """How the loop gets a step's velocity and runs its step callback."""

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
        """The guided velocity; ``check("before")`` first, ``check("during")`` between passes."""

    def after_step(self, callback: Callable[[], None]) -> None:
        """Run the step callback."""

    def finish(self) -> None:
        """The loop ended normally."""


class LocalGuidance:
    """Both guidance passes in this process (:func:`guided_velocity`); stops raise at once."""

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
        check("before")
        return guided_velocity(transformer, latents, timestep, positive, negative, cfg,
                               between_passes=functools.partial(check, "during"))

    def after_step(self, callback: Callable[[], None]) -> None:
        callback()

    def finish(self) -> None:
        pass


@torch.no_grad()
def sample(
    transformer: torch.nn.Module,
    noise: torch.Tensor,
    cond_latents: Mapping[int, torch.Tensor],
    multipliers: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    steps: int,
    cfg: float,
    shift: float = DEFAULT_SHIFT,
    callback: StepCallback | None = None,
    cancel: threading.Event | None = None,
    deadline: Deadline | None = None,
    guidance: Guidance | None = None,
) -> SampleResult:
    """Denoise ``noise`` ``[B, C, F, H, W]`` with per-frame multipliers ``[F]`` and return the final latents.

    ``cancel`` and ``deadline`` are checked before every step and between its two guidance passes;
    :class:`GenerationCancelled` or :class:`JobTimedOut` is raised. ``guidance`` defaults to
    :class:`LocalGuidance`.
    """
    if multipliers.shape != (noise.shape[2],):
        raise ValueError(f"multipliers must have one entry per latent frame ({noise.shape[2]}), got {tuple(multipliers.shape)}")
    device = noise.device
    multipliers = multipliers.to(device=device, dtype=torch.float32)
    sig = frame_sigmas(shifted_sigmas(steps, shift).to(device), multipliers)  # [steps + 1, F]
    latents = initial_latents(noise.float(), cond_latents, multipliers)
    batch = latents.shape[0]

    start = time.perf_counter()
    if not multipliers.any():  # every frame stays at sigma 0, so no step would move it
        return SampleResult(latents, time.perf_counter() - start, ())

    def check(i: int, where: str) -> None:
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled(f"cancelled {where} step {i + 1} of {steps}")
        if deadline is not None:
            deadline.check(i, steps)

    guidance = guidance if guidance is not None else LocalGuidance()
    step_seconds = []
    for i in range(steps):
        t0 = time.perf_counter()
        timestep = frame_timesteps(sig[i]).expand(batch, -1)
        velocity = guidance.velocity(transformer, latents, timestep, positive, negative, cfg,
                                     functools.partial(check, i))
        dt = (sig[i + 1] - sig[i]).view(1, 1, -1, 1, 1)
        previous, latents = latents, latents + velocity * dt
        step_seconds.append(time.perf_counter() - t0)
        if callback is not None:
            denoised = previous - velocity * sig[i].view(1, 1, -1, 1, 1)
            report = StepReport(i + 1, steps, latents, time.perf_counter() - start, denoised)
            guidance.after_step(functools.partial(callback, report))
    guidance.finish()
    return SampleResult(latents, time.perf_counter() - start, tuple(step_seconds))
