"""The one object the UI talks to: loads the models in the background, reports status, runs jobs.

A job: validate -> encode prompt (cached) -> encode conditioning images/video -> sample with per-frame
timesteps -> decode -> write MP4 + settings JSON. One job runs at a time; progress goes out through a
callback and a cancel event is checked before every denoising step and between its two guidance passes.
With ``max_job_seconds`` a job past that time stops at the next such check, or between phases, with
:class:`JobTimedOut`; nothing is written and the engine stays ready.
"""

from __future__ import annotations

import gc
import json
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .conditioning import Conditioning, plan_request
from .errors import EngineNotReady, PusaInputError
from .facts import DEFAULT_NOISE_MULTIPLIER, MAX_JOB_SECONDS_FLAG, frames_needed
from .latents import decode_latents, encode_pixels
from .loading import PusaComponents, load_components, source_defaults
from .lora import set_lora_alpha
from .placement import (JobSize, Placement, PlanOptions, StageDevices, apply_placement, apply_vae_tiling, choose_placement,
                        detect_gpus, plan_job)
from .outputs import OutputFolder, Retention
from .media import fit_frame, from_model_pixels, load_image, read_video, to_model_pixels, write_mp4
from .requests import DEFAULT_NEGATIVE_PROMPT, ImageToVideo, MultiFrames, Request, Settings, VideoToVideo, request_to_dict
from .sampling import Deadline, StepReport, sample
from .text import encode_prompts, token_count
from .weights import ModelSource

# Share of a job's wall time each phase is expected to take, for one progress bar across phases.
_PHASES = {"prompt": (0.0, 0.03), "inputs": (0.03, 0.06), "denoise": (0.06, 0.92), "decode": (0.92, 0.98), "write": (0.98, 1.0)}
_PROMPT_CACHE_SIZE = 16


def _architecture(config: Any) -> dict[str, Any]:
    """A model config without diffusers' bookkeeping keys (``_name_or_path`` may be a Path)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _checked_limit(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise PusaInputError(MAX_JOB_SECONDS_FLAG, f"{seconds!r} is not a time limit; give a positive number of "
                                                   "seconds, e.g. 600, or leave it out for no limit")
    return float(seconds)


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message says what to lower. The engine stays usable."""


@dataclass(frozen=True)
class Progress:
    phase: str
    fraction: float
    step: int | None
    total: int | None
    eta_seconds: float | None
    message: str


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


@dataclass(frozen=True)
class EngineStatus:
    state: Literal["loading", "ready", "failed"]
    message: str
    model_name: str
    is_small: bool
    placement: str


ProgressCallback = Callable[[Progress], None]


class Engine:
    """Owns the loaded components. Build with :meth:`from_source` (real use) or :meth:`from_components` (tests)."""

    def __init__(
        self,
        loader: Callable[[], PusaComponents],
        output_dir: Path,
        model_name: str,
        is_small: bool,
        placement: str | None = None,
        fp8: bool = False,
        defaults: Settings | None = None,
        retention: Retention = Retention(),
        max_job_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_job_seconds``: a job's time limit (None: none); ``clock`` measures it (tests inject one)."""
        self._max_job_seconds = _checked_limit(max_job_seconds)
        self._clock = clock
        self._loader = loader
        self.outputs = OutputFolder(Path(output_dir), retention)
        self._model_name = model_name
        self._is_small = is_small
        self._requested_placement = placement
        self._fp8 = fp8
        self._defaults = defaults
        self._components: PusaComponents | None = None
        self._placement: Placement | None = None
        self._devices: StageDevices | None = None
        self._state: Literal["loading", "ready", "failed"] = "loading"
        self._message = "waiting to load"
        self._job_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._prompt_cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._alpha: float | None = None

    @classmethod
    def from_source(
        cls, source: ModelSource, output_dir: Path = Path("outputs"), placement: str | None = None, fp8: bool = False,
        retention: Retention = Retention(),
        max_job_seconds: float | None = None,
    ) -> Engine:
        """An engine that loads ``source`` when started. ``placement`` overrides the automatic choice."""
        return cls(
            lambda: load_components(source), output_dir, source.name, source.is_small,
            placement=placement, fp8=fp8, defaults=source_defaults(source), retention=retention,
            max_job_seconds=max_job_seconds,
        )

    @classmethod
    def from_components(
        cls, components: PusaComponents, output_dir: Path = Path("outputs"), placement: str | None = None,
        retention: Retention = Retention(),
        max_job_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Engine:
        return cls(
            lambda: components, output_dir, components.name, components.is_small, placement,
            defaults=components.defaults, retention=retention, max_job_seconds=max_job_seconds, clock=clock,
        )

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the models in a background thread; returns at once. :meth:`status` tells the progress."""
        if self._thread is not None:
            return
        self._message = f"loading {self._model_name}..."
        self._thread = threading.Thread(target=self._load, name="pusa-engine-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            components = self._loader()
            self._message = f"placing {self._model_name}..."
            self._placement, self._devices = self._place(components)
        except Exception as err:  # any load failure must reach the status line, not kill the app
            self._state, self._message = "failed", f"could not load {self._model_name}: {err}"
            return
        self._components = components
        self._state = "ready"
        self._message = f"{components.name} ready (loaded in {time.perf_counter() - t0:.1f} s)"

    def _place(self, c: PusaComponents) -> tuple[Placement, StageDevices]:
        """Choose where each component runs for this machine, from the loaded models' own sizes."""
        options = PlanOptions.with_text_encoder_config(
            c.text_encoder.config,
            weights="fp32" if c.is_small else ("fp8" if self._fp8 else "bf16"),
            lora_rank=c.lora_rank,
            transformer_config=_architecture(c.transformer.config),
            vae_config=_architecture(c.vae.config),
        )
        d = c.defaults
        job = JobSize(d.width, d.height, d.num_frames) if c.is_small else JobSize(1280, 720, 81)
        placement = choose_placement(detect_gpus(), job=job, requested=self._requested_placement, options=options)
        return placement, apply_placement(placement, c.transformer, c.text_encoder, c.vae)

    def wait_ready(self, timeout: float | None = None) -> EngineStatus:
        if self._thread is None:
            self.start()
        assert self._thread is not None
        self._thread.join(timeout)
        return self.status()

    def status(self) -> EngineStatus:
        where = f"{self._placement.kind}: {self._placement.reason}" if self._placement else "not placed yet"
        return EngineStatus(self._state, self._message, self._model_name, self._is_small, where)

    def defaults(self) -> Settings:
        """Settings this model is meant to run at (the small model's own size and length)."""
        if self._components is not None:
            return self._components.defaults
        return self._defaults or Settings()

    def default_noise_multiplier(self) -> float:
        return self._components.noise_multiplier if self._components is not None else DEFAULT_NOISE_MULTIPLIER

    def memory_report(self, settings: Settings) -> str:
        """The memory plan for a job of this size under the current placement, in one paragraph."""
        if self._placement is None:
            return "The memory plan appears once the model is loaded."
        try:
            return plan_job(self._placement, JobSize(settings.width, settings.height, settings.num_frames)).summary()
        except PusaInputError as err:
            return str(err)

    # -- one job ---------------------------------------------------------------------------------
    def generate(
        self, request: Request, progress: ProgressCallback | None = None, cancel: threading.Event | None = None
    ) -> GenerationResult:
        """Run one job to an MP4.

        Raises PusaInputError, GenerationCancelled, JobTimedOut, EngineNotReady or OutOfMemory.
        """
        plan = plan_request(request)  # validation first: bad input is answered even while loading
        components = self._components
        if components is None:
            raise EngineNotReady(
                f"the model is still loading ({self._message}); try again when the status says ready"
                if self._state == "loading"
                else f"the model failed to load: {self._message}"
            )
        with self._job_lock:
            try:
                return self._run(components, request, plan, progress or (lambda p: None), cancel)
            except torch.OutOfMemoryError:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                s = request.settings
                raise OutOfMemory(
                    f"out of GPU memory at {s.width}x{s.height}, {s.num_frames} frames: lower the size "
                    "(e.g. 832x480), the frame count, or use --placement offload; the app is ready for the next job"
                ) from None

    def _run(
        self,
        c: PusaComponents,
        request: Request,
        plan: Conditioning,
        progress: ProgressCallback,
        cancel: threading.Event | None,
    ) -> GenerationResult:
        s = request.settings
        assert self._placement is not None and self._devices is not None
        memory = plan_job(self._placement, JobSize(s.width, s.height, s.num_frames))
        if memory.verdict != "ok":
            raise PusaInputError("size", f"this job is predicted not to fit in memory. {memory.summary()}")
        apply_vae_tiling(c.vae, memory)
        devices = self._devices
        device = devices.transformer_device
        seed = s.seed if s.seed is not None else random.randint(0, 2**32 - 1)
        start = time.perf_counter()
        deadline = Deadline.starting_now(self._max_job_seconds, self._clock) if self._max_job_seconds else None

        def check_time(done: int) -> None:
            if deadline is not None:
                deadline.check(done, s.steps)

        def report(phase: str, within: float, message: str, **extra: Any) -> None:
            lo, hi = _PHASES[phase]
            progress(Progress(phase, lo * (1 - within) + hi * within, extra.get("step"), extra.get("total"), extra.get("eta"), message))

        report("prompt", 0.0, "encoding prompt")
        notes = self._prompt_notes(c, s)
        positive = self._embed(c, s.prompt, devices.text_device).to(device)
        negative = self._embed(c, s.negative_prompt, devices.text_device).to(device) if s.cfg != 1.0 else None
        check_time(0)

        report("inputs", 0.0, "encoding conditioning frames" if plan.positions else "no conditioning frames")
        cond_latents = {p: z.to(device) for p, z in self._encode_inputs(c, request, plan, devices.vae_device).items()}

        if c.has_lora and self._alpha != s.lora_alpha:
            set_lora_alpha(c.transformer, s.lora_alpha)
            self._alpha = s.lora_alpha

        shape = (1, c.transformer.config.in_channels, plan.num_latent_frames, s.height // 8, s.width // 8)
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)).to(device)

        def on_step(r: StepReport) -> None:
            eta = r.seconds / r.step * (r.total - r.step)
            report("denoise", r.step / r.total, f"step {r.step}/{r.total}", step=r.step, total=r.total, eta=eta)

        report("denoise", 0.0, f"step 0/{s.steps}", step=0, total=s.steps)
        result = sample(
            c.transformer, noise, cond_latents, plan.multiplier_vector(), positive, negative,
            s.steps, s.cfg, s.shift, callback=on_step, cancel=cancel, deadline=deadline,
        )
        check_time(s.steps)

        report("decode", 0.0, "decoding frames")
        frames = from_model_pixels(decode_latents(c.vae, result.latents, devices.vae_device))
        check_time(s.steps)  # the last chance: once writing starts the job finishes

        report("write", 0.0, "writing video")
        settings = request_to_dict(request, seed=seed, record_input=self.outputs.record_input)
        settings["model"] = c.name
        settings["timing_seconds"] = {"denoise": round(result.seconds, 3), "total": round(time.perf_counter() - start, 3)}
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
    ) -> dict[int, torch.Tensor]:
        """Clean latents ``[1, C, 1, h, w]`` per conditioned slot."""
        s = request.settings
        if isinstance(request, (ImageToVideo, MultiFrames)):
            images = [request.image] if isinstance(request, ImageToVideo) else list(request.images)
            out = {}
            for i, (position, image) in enumerate(zip(plan.positions, images)):
                field = "image" if isinstance(request, ImageToVideo) else f"images[{i + 1}]"
                frame = fit_frame(load_image(image, field), s.width, s.height, s.fit)
                # Every image is encoded alone as a 1-frame clip, whatever slot it goes to.
                out[position] = encode_pixels(c.vae, to_model_pixels(frame[None]), device)
            return out
        if isinstance(request, VideoToVideo):
            needed = frames_needed(plan.positions)
            # Each frame is fitted as it is read, so a large source costs one source frame, not the clip.
            frames, _ = read_video(request.video, max_frames=needed, size=(s.width, s.height), fit=s.fit)
            if len(frames) < needed:
                raise PusaInputError(
                    "video",
                    f"has {len(frames)} frames but position {max(plan.positions)} needs at least {needed}; "
                    "use a longer video or lower positions",
                )
            # Wan's VAE is causal in time, so encoding just the frames the slots need gives the same latents
            # for those slots as encoding the whole clip.
            latents = encode_pixels(c.vae, to_model_pixels(frames), device)
            return {p: latents[:, :, p : p + 1] for p in plan.positions}
        return {}
