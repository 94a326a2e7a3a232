"""One job, start to finish: encode prompt (cached) -> encode conditioning frames -> sample with per-frame
timesteps -> decode -> write MP4 + settings JSON.

:class:`JobRunner` holds what outlives a job (the prompt cache, the output folder, the time limit); the engine owns the models and calls :meth:`JobRunner.run` under its lock.
A cancel event is checked before every denoising step and between its two guidance passes. With a
time limit, a job past it stops at the next such check, or between phases, with
:class:`~pusa_core.errors.JobTimedOut`; nothing is written either way.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache_choice import StepCache, parse_step_cache
from .conditioning import Conditioning
from .errors import PusaInputError
from .facts import FIRST_BLOCK, MAX_JOB_SECONDS_FLAG, SEED, SPATIAL_COMPRESSION, frames_needed
from .latents import decode_latents, encode_pixels
from .loading import PusaComponents
from .adapters import LoraStack
from .media import FPS_TOLERANCE, fit_frame, from_model_pixels, load_image, read_video, to_model_pixels, write_mp4
from .outputs import OutputFolder
from .placement import JobSize, Placement, StageDevices, apply_vae_tiling, plan_job
from .preview import decoded_strip, linear_strip
from .requests import DEFAULT_NEGATIVE_PROMPT, ImageToVideo, MultiFrames, Request, Settings, VideoToVideo, request_to_dict
from .sampling import Deadline, SampleResult, StepCallback, StepReport, sample
from .step_cache import step_caching
from .text import encode_prompts, token_count

# Share of a job's wall time each phase is expected to take, for one progress bar across phases.
_PHASES = {"prompt": (0.0, 0.03), "inputs": (0.03, 0.06), "denoise": (0.06, 0.92), "decode": (0.92, 0.98), "write": (0.98, 1.0)}
_PROMPT_CACHE_SIZE = 16


@dataclass(frozen=True)
class Progress:
    phase: str
    fraction: float
    step: int | None
    total: int | None
    eta_seconds: float | None
    message: str
    preview: np.ndarray | None = None  # after a denoising step, when asked for: the clean estimate as an RGB strip


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class SamplingJob:
    """What sampling one job takes: the job's settings and the tensors computed before the loop.

    Under torchrun the leader computes them once and sends them to every rank (:mod:`pusa_core.ranks`).
    """

    settings: Settings
    noise: torch.Tensor
    cond_latents: dict[int, torch.Tensor]
    multipliers: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor | None

    def to(self, device: torch.device) -> SamplingJob:
        """The same job with every tensor on ``device``."""
        return SamplingJob(
            self.settings, self.noise.to(device), {p: z.to(device) for p, z in self.cond_latents.items()},
            self.multipliers.to(device), self.positive.to(device),
            None if self.negative is None else self.negative.to(device),
        )


# Samples one job on this process: its LoRA stack applied, the loop run (on every rank under torchrun).
Sampler = Callable[[SamplingJob, StepCallback, threading.Event | None, Deadline | None], SampleResult]


def local_sampler(transformer: torch.nn.Module, loras: LoraStack) -> Sampler:
    """One process: both guidance passes here."""

    def run(job: SamplingJob, callback: StepCallback, cancel: threading.Event | None,
            deadline: Deadline | None) -> SampleResult:
        s = job.settings
        loras.use(s)  # a no-op when the adapters and weights are those of the last job
        return sample(transformer, job.noise, job.cond_latents, job.multipliers, job.positive, job.negative,
                      s.steps, s.cfg, s.shift, callback=callback, cancel=cancel, deadline=deadline)

    return run


@dataclass(frozen=True)
class GenerationResult:
    video_path: Path
    settings_path: Path
    seed: int
    settings: dict[str, Any]
    seconds: float
    num_frames: int
    width: int
    height: int
    notes: tuple[str, ...] = ()  # things the user should know about this job (e.g. a prompt cut to fit)


def checked_time_limit(seconds: float | None) -> float | None:
    """A job time limit in seconds, or None for none; anything else is refused naming the flag."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise PusaInputError(MAX_JOB_SECONDS_FLAG, f"{seconds!r} is not a time limit; give a positive number of "
                                                   "seconds, e.g. 600, or leave it out for no limit")
    return float(seconds)


def step_cache_for(placement: Placement, settings: Settings) -> StepCache | None:
    """The job's step cache, refused where the placement cannot run it."""
    cache = parse_step_cache(settings.step_cache)
    if cache is None or placement.sequence_degree == placement.cfg_degree == 1:
        return cache
    if placement.sequence_degree == 1:
        why = ("the ranks run the guidance passes apart, and caching has not been measured across ranks "
               "(every rank would have to cache its own pass)")
    elif cache.kind == FIRST_BLOCK:
        why = ("each rank decides from its own slice of the tokens whether to skip the blocks, and a rank that skips "
               "leaves the others waiting in the blocks' collectives")
    else:
        why = "it has not been run across sequence ranks, where it would stand in for the pass that gathers the tokens"
    raise PusaInputError("step_cache", f"{cache.kind} cannot run under the {placement.kind} placement: {why}; set step_cache to off")


class JobRunner:
    """Runs one job at a time on loaded components; keeps what is worth keeping between jobs."""

    def __init__(
        self, outputs: OutputFolder, max_job_seconds: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``max_job_seconds``: a job's time limit (None: none); ``clock`` measures it (tests inject one)."""
        self.outputs = outputs
        self.max_job_seconds = checked_time_limit(max_job_seconds)
        self._clock = clock
        self._prompt_cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()

    def run(
        self,
        c: PusaComponents,
        placement: Placement,
        devices: StageDevices,
        loras: LoraStack,
        sampler: Sampler,
        request: Request,
        plan: Conditioning,
        progress: ProgressCallback,
        cancel: threading.Event | None,
        preview: bool = False,
    ) -> GenerationResult:
        """``preview``: each step's progress carries a strip of the clean estimate (see :mod:`pusa_core.preview`).

        ``sampler`` runs the loop (:func:`local_sampler`, or every rank's under torchrun); ``loras`` (which
        the sampler applies) tells the memory plan whether the adapters run merged.
        """
        s = request.settings
        cache = step_cache_for(placement, s)
        memory = plan_job(placement, JobSize(s.width, s.height, s.num_frames), lora_merged=loras.merged,
                          active_lora_rank=loras.active_rank(s))
        if memory.verdict != "ok":
            raise PusaInputError("size", f"this job is predicted not to fit in memory. {memory.summary()}")
        apply_vae_tiling(c.vae, memory)
        device = devices.transformer_device
        seed = s.seed if s.seed is not None else random.randint(int(SEED.low), int(SEED.high))
        start = time.perf_counter()
        deadline = Deadline.starting_now(self.max_job_seconds, self._clock) if self.max_job_seconds else None

        def check_time(done: int) -> None:
            if deadline is not None:
                deadline.check(done, s.steps)

        def report(phase: str, within: float, message: str, **extra: Any) -> None:
            lo, hi = _PHASES[phase]
            fraction = lo * (1 - within) + hi * within
            progress(Progress(phase, fraction, extra.get("step"), extra.get("total"), extra.get("eta"), message, extra.get("preview")))

        report("prompt", 0.0, "encoding prompt")
        notes = self._prompt_notes(c, s)
        positive = self._embed(c, s.prompt, devices.text_device).to(device)
        negative = self._embed(c, s.negative_prompt, devices.text_device).to(device) if s.cfg != 1.0 else None
        check_time(0)

        report("inputs", 0.0, "encoding conditioning frames" if plan.positions else "no conditioning frames")
        encoded, input_notes = self._encode_inputs(c, request, plan, devices.vae_device)
        cond_latents = {p: z.to(device) for p, z in encoded.items()}
        notes += input_notes

        shape = (1, c.transformer.config.in_channels, plan.num_latent_frames, s.height // SPATIAL_COMPRESSION, s.width // SPATIAL_COMPRESSION)
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)).to(device)

        def on_step(r: StepReport) -> None:
            eta = r.seconds / r.step * (r.total - r.step)
            # The small model's decoder is cheap enough to show the real thing; the 14B's is not.
            strip = (
                (decoded_strip(c.vae, r.denoised, devices.vae_device) if c.is_small else linear_strip(r.denoised))
                if preview else None
            )
            report("denoise", r.step / r.total, f"step {r.step}/{r.total}", step=r.step, total=r.total, eta=eta, preview=strip)

        report("denoise", 0.0, f"step 0/{s.steps}", step=0, total=s.steps)
        job = SamplingJob(s, noise, cond_latents, plan.multiplier_vector(), positive, negative)
        with step_caching(c.transformer, cache, s.steps) as passes:  # the passes of this process
            result = sampler(job, on_step, cancel, deadline)
        check_time(s.steps)

        report("decode", 0.0, "decoding frames")
        frames = from_model_pixels(decode_latents(c.vae, result.latents, devices.vae_device))
        check_time(s.steps)  # the last chance: once writing starts the job finishes

        report("write", 0.0, "writing video")
        settings = request_to_dict(request, seed=seed, record_input=self.outputs.record_input)
        settings["model"] = c.name
        settings["timing_seconds"] = {"denoise": round(result.seconds, 3), "total": round(time.perf_counter() - start, 3)}
        settings["transformer_passes"] = {"passes": passes.passes, "skipped": passes.skipped}
        video_path = self.outputs.video_path(request.task, seed)
        write_mp4(frames, video_path, s.fps, settings)
        settings_path = video_path.with_suffix(".json")
        settings_path.write_text(json.dumps(settings, indent=2))
        self.outputs.prune()
        report("write", 1.0, "done")
        return GenerationResult(
            video_path, settings_path, seed, settings, time.perf_counter() - start, frames.shape[0], s.width, s.height,
            notes,
        )

    @staticmethod
    def _prompt_notes(c: PusaComponents, s: Settings) -> tuple[str, ...]:
        """Say when a prompt is longer than the text encoder reads: it is cut, not refused.

        The stock negative prompt is left out: it is cut on small models by design, every job.
        """
        notes = []
        own_negative = s.cfg != 1.0 and s.negative_prompt != DEFAULT_NEGATIVE_PROMPT
        prompts = [("Prompt", s.prompt)] + ([("Negative prompt", s.negative_prompt)] if own_negative else [])
        for label, text in prompts:
            count = token_count(c.tokenizer, text)
            if count > c.max_sequence_length:
                notes.append(
                    f"{label}: {count} tokens, but the text encoder reads {c.max_sequence_length}; "
                    f"only the first {c.max_sequence_length} were used"
                )
        return tuple(notes)

    def _embed(self, c: PusaComponents, prompt: str, device: torch.device) -> torch.Tensor:
        key = (prompt, c.max_sequence_length)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = encode_prompts(c.tokenizer, c.text_encoder, [prompt], c.max_sequence_length, device)
            if len(self._prompt_cache) > _PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        self._prompt_cache.move_to_end(key)
        return self._prompt_cache[key]

    def _encode_inputs(
        self, c: PusaComponents, request: Request, plan: Conditioning, device: torch.device
    ) -> tuple[dict[int, torch.Tensor], tuple[str, ...]]:
        """Clean latents ``[1, C, 1, h, w]`` per conditioned slot, and what the user should know about the inputs."""
        s = request.settings
        if isinstance(request, (ImageToVideo, MultiFrames)):
            images = [request.image] if isinstance(request, ImageToVideo) else list(request.images)
            out = {}
            for i, (position, image) in enumerate(zip(plan.positions, images)):
                field = "image" if isinstance(request, ImageToVideo) else f"images[{i + 1}]"
                frame = fit_frame(load_image(image, field), s.width, s.height, s.fit)
                # Every image is encoded alone as a 1-frame clip, whatever slot it goes to.
                out[position] = encode_pixels(c.vae, to_model_pixels(frame[None]), device)
            return out, ()
        if isinstance(request, VideoToVideo):
            needed = frames_needed(plan.positions)
            # Each frame is fitted and resampled to the job's fps as it is read, so a large source costs one
            # source frame, not the clip, and a 30 fps clip keeps its speed.
            frames, source_fps = read_video(
                request.video, max_frames=needed, size=(s.width, s.height), fit=s.fit, fps=s.fps,
                last=request.frames_from == "last",
            )
            if len(frames) < needed:
                raise PusaInputError(
                    "video",
                    f"has {len(frames)} frames but position {max(plan.positions)} needs at least {needed}; "
                    "use a longer video or lower positions",
                )
            notes = (f"Input was {source_fps:g} fps, resampled to {s.fps} fps",) if abs(source_fps - s.fps) > FPS_TOLERANCE else ()
            # Wan's VAE is causal in time, so encoding just the frames the slots need gives the same latents
            # for those slots as encoding the whole clip.
            latents = encode_pixels(c.vae, to_model_pixels(frames), device)
            return {p: latents[:, :, p : p + 1] for p in plan.positions}, notes
        return {}, ()
