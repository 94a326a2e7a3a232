"""The one object the UI talks to: loads the models in the background, reports status, runs jobs.

The engine owns the model lifecycle (load, place, status, defaults); a job itself is
:class:`~pusa_core.job.JobRunner`'s. One job runs at a time, and input is validated before the model
is even loaded, so a bad request is answered at once.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from . import facts
from .adapters import LoraCatalog, LoraStack, attach_loras, merge_blocker
from .conditioning import Conditioning, plan_request
from .continuation import JoinedVideo, check_continuation, write_joined
from .errors import EngineNotReady, PusaInputError
from .facts import DEFAULT_ATTENTION_BACKEND, DEFAULT_NOISE_MULTIPLIER
from .job import GenerationResult, JobRunner, Progress, ProgressCallback, SampleResult, Sampler, SamplingJob, local_sampler
from .loading import PusaComponents, load_components, source_defaults, source_example_prompts, source_noise_multiplier
from .outputs import OutputFolder, Retention
from .parallel import CfgParallel, RanksOutOfStep, SequenceParallel, parallel_guidance
from .placement import REFERENCE_JOB, JobSize, Placement, PlanOptions, StageDevices, apply_placement, choose_placement, detect_gpus, plan_job
from .ranks import Ranks
from .requests import Request, Settings, VideoToVideo, preset_settings
from .sampling import Deadline, StepCallback, sample
from .speed import apply_speed_options, check_attention_backend
from .weights import ModelSource

__all__ = ["ContinuationResult", "Engine", "EngineStatus", "GenerationResult", "OutOfMemory", "Progress", "ProgressCallback"]


def _architecture(config: Any) -> dict[str, Any]:
    """A model config without diffusers' bookkeeping keys (``_name_or_path`` may be a Path)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


@dataclass(frozen=True)
class ContinuationResult:
    """A continued video: the new part (its own output) and the original joined to it."""

    part: GenerationResult
    joined: JoinedVideo


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message says what to lower. The engine stays usable."""


@dataclass(frozen=True)
class EngineStatus:
    state: Literal["loading", "ready", "failed"]
    message: str
    model_name: str
    is_small: bool
    placement: str
    placement_kind: str = ""  # e.g. "cpu", "single"; empty until placed


@dataclass(frozen=True)
class SpeedOptions:
    """How jobs run, chosen at start: the page's default preset, LoRAs stacked on Pusa's, GPU options."""

    preset: str = facts.QUALITY
    loras: LoraCatalog = LoraCatalog()
    attention_backend: str = DEFAULT_ATTENTION_BACKEND
    compile: bool = False

    def __post_init__(self) -> None:
        """Refuse what cannot run here before anything loads, naming the flag."""
        if self.preset not in facts.PRESETS:
            raise PusaInputError("--preset", f"must be one of {', '.join(facts.PRESETS)}, got {self.preset!r}")
        if self.preset == facts.FAST and self.loras.lightx2v is None:
            raise PusaInputError("--preset", f"{self.loras.lightx2v_missing}; or start with --preset quality")
        check_attention_backend(self.attention_backend)


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
        speed: SpeedOptions = SpeedOptions(),
        example_prompts: tuple[str, ...] = (),
        noise_multiplier: float = DEFAULT_NOISE_MULTIPLIER,
        ranks: Ranks | None = None,
    ) -> None:
        """``max_job_seconds``: a job's time limit (None: none); ``clock`` measures it (tests inject one);
        ``example_prompts``: prompts the model knows how to follow (the small model's), shown as examples;
        ``noise_multiplier``: the model's own, known before it loads (the page shows it at once);
        ``ranks``: the processes of a torchrun launch that run every job together (default: this one alone)."""
        self.jobs = JobRunner(OutputFolder(Path(output_dir), retention), max_job_seconds, clock)
        self.speed = speed
        self.ranks = ranks if ranks is not None else Ranks()
        self._guidance: CfgParallel | SequenceParallel | None = None
        self._loras: LoraStack | None = None
        self._loader = loader
        self._model_name = model_name
        self._is_small = is_small
        self._requested_placement = placement
        self._fp8 = fp8
        self._defaults = defaults
        self._example_prompts = tuple(example_prompts)
        self._noise_multiplier = noise_multiplier
        self._components: PusaComponents | None = None
        self._placement: Placement | None = None
        self._devices: StageDevices | None = None
        self._state: Literal["loading", "ready", "failed"] = "loading"
        self._message = "waiting to load"
        self._job_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_source(
        cls, source: ModelSource, output_dir: Path = Path("outputs"), placement: str | None = None, fp8: bool = False,
        retention: Retention = Retention(),
        max_job_seconds: float | None = None,
        speed: SpeedOptions = SpeedOptions(),
        ranks: Ranks | None = None,
    ) -> Engine:
        """An engine that loads ``source`` when started. ``placement`` overrides the automatic choice."""
        return cls(
            lambda: load_components(source), output_dir, source.name, source.is_small,
            placement=placement, fp8=fp8, defaults=source_defaults(source), retention=retention,
            max_job_seconds=max_job_seconds, speed=speed, example_prompts=source_example_prompts(source),
            noise_multiplier=source_noise_multiplier(source), ranks=ranks,
        )

    @classmethod
    def from_components(
        cls, components: PusaComponents, output_dir: Path = Path("outputs"), placement: str | None = None,
        retention: Retention = Retention(),
        max_job_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        speed: SpeedOptions = SpeedOptions(),
        ranks: Ranks | None = None,
    ) -> Engine:
        return cls(
            lambda: components, output_dir, components.name, components.is_small, placement,
            defaults=components.defaults, retention=retention, max_job_seconds=max_job_seconds, clock=clock,
            speed=speed, example_prompts=components.example_prompts, noise_multiplier=components.noise_multiplier,
            ranks=ranks,
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
            # Before placement: the adapters' weights are placed with the layers they belong to.
            attach_loras(components.transformer, self.speed.loras)
            self._message = f"placing {self._model_name}..."
            self._placement, self._devices = self._place(components)
            apply_speed_options(components.transformer, self.speed.attention_backend, self.speed.compile)
            self._loras = LoraStack(
                components.transformer, self.speed.loras, components.has_lora, components.pristine,
                merge_blocker(self._placement),
            )
            if self.ranks.parallel:
                self._guidance = parallel_guidance(
                    components.transformer, self._placement.cfg_degree, self._placement.sequence_degree
                )
        except Exception as err:  # any load failure must reach the status line, not kill the app
            self._state, self._message = "failed", f"could not load {self._model_name}: {err}"
            return
        self._components = components
        self._state = "ready"
        ranks = f" on {self.ranks.world_size} ranks" if self.ranks.parallel else ""
        self._message = (
            f"{components.name} ready{ranks} (loaded in {time.perf_counter() - t0:.1f} s); {self._loras.describe()}"
        )
        if self.ranks.leader:
            self.ranks.start_keep_alive()

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
        job = JobSize(d.width, d.height, d.num_frames) if c.is_small else REFERENCE_JOB
        # The page's default cfg: at cfg 1 there is no second pass for a second rank to run.
        cfg = self.preset_defaults(self.speed.preset).cfg
        placement = choose_placement(detect_gpus(), job=job, requested=self._requested_placement, options=options,
                                     cfg=cfg, ranks=self.ranks.world_size)
        devices = apply_placement(placement, c.transformer, c.text_encoder, c.vae,
                                  rank=self.ranks.rank if self.ranks.parallel else None)
        if self.ranks.parallel and (placement.memory.text_device, placement.memory.vae_device) != (
            placement.memory.devices[0].device, placement.memory.devices[0].device
        ) and placement.gpus:
            raise RuntimeError(f"the {placement.kind} plan puts the text encoder or the VAE on a rank other than 0, "
                               "and only rank 0 runs them; give rank 0 the GPU with the most free memory")
        return placement, devices

    def wait_ready(self, timeout: float | None = None) -> EngineStatus:
        if self._thread is None:
            self.start()
        assert self._thread is not None
        self._thread.join(timeout)
        return self.status()

    @property
    def outputs(self) -> OutputFolder:
        return self.jobs.outputs

    def status(self) -> EngineStatus:
        where = f"{self._placement.kind}: {self._placement.reason}" if self._placement else "not placed yet"
        kind = self._placement.kind if self._placement else ""
        return EngineStatus(self._state, self._message, self._model_name, self._is_small, where, kind)

    def defaults(self) -> Settings:
        """Settings this model is meant to run at (the small model's own size and length), in the start preset."""
        return self.preset_defaults(self.speed.preset)

    def preset_defaults(self, preset: str) -> Settings:
        """The model's own settings as ``preset`` runs them, with the extra LoRAs at their start weights."""
        model = self._components.defaults if self._components is not None else (self._defaults or Settings())
        return preset_settings(replace(model, extra_loras=self.speed.loras.extra_defaults()), preset)

    def fast_preset_problem(self) -> str | None:
        """Why the Fast preset cannot run (with the command that fixes it), or None when it can."""
        return None if self.speed.loras.lightx2v is not None else self.speed.loras.lightx2v_missing

    def example_prompts(self) -> tuple[str, ...]:
        """Prompts this model was trained to follow (the small model's captions); empty for the 14B."""
        return self._example_prompts

    def default_noise_multiplier(self) -> float:
        return self._components.noise_multiplier if self._components is not None else self._noise_multiplier

    def memory_report(self, settings: Settings) -> str:
        """The memory plan for a job of this size and preset under the current placement, in one paragraph."""
        if self._placement is None:
            return "The memory plan appears once the model is loaded."
        try:
            job = JobSize(settings.width, settings.height, settings.num_frames)
            if self._loras is None:
                return plan_job(self._placement, job).summary()
            loras = self._loras
            plan = plan_job(self._placement, job, lora_merged=loras.merged, active_lora_rank=loras.active_rank(settings))
            return f"{plan.summary()} {loras.memory_note(settings)}".rstrip()
        except PusaInputError as err:
            return str(err)

    # -- one job ---------------------------------------------------------------------------------
    def check(self, request: Request) -> Conditioning:
        """Refuse a bad request (PusaInputError) without running it, e.g. every job of a batch before the first starts."""
        plan = plan_request(request)
        self.speed.loras.check(request.settings)
        return plan

    def generate(
        self, request: Request, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
        preview: bool = False,
    ) -> GenerationResult:
        """Run one job to an MP4; with ``preview``, denoising progress carries a picture of the video forming.

        Raises PusaInputError, GenerationCancelled, JobTimedOut, EngineNotReady or OutOfMemory.
        """
        plan = self.check(request)  # validation first: bad input is answered even while loading
        components = self._components
        if components is None:
            raise EngineNotReady(
                f"the model is still loading ({self._message}); try again when the status says ready"
                if self._state == "loading"
                else f"the model failed to load: {self._message}"
            )
        with self._job_lock:
            try:
                assert self._placement is not None and self._devices is not None and self._loras is not None
                return self.jobs.run(
                    components, self._placement, self._devices, self._loras, self._sampler(components, request.settings),
                    request,
                    plan, progress or (lambda p: None), cancel, preview,
                )
            except torch.OutOfMemoryError:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                s = request.settings
                raise OutOfMemory(
                    f"out of GPU memory at {s.width}x{s.height}, {s.num_frames} frames: lower the size "
                    "(e.g. 832x480), the frame count, or use --placement offload; the app is ready for the next job"
                ) from None

    def continue_video(
        self, request: VideoToVideo, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
        preview: bool = False,
    ) -> ContinuationResult:
        """Continue ``request.video``: generate from its last frames, then write it joined to the new part.

        ``request`` must take the video's last frames and leave the new part at least one frame of its own;
        the joined video has ``original + new - overlap`` frames (see :mod:`pusa_core.continuation`).
        """
        plan_request(request)
        check_continuation(request.frames_from, request.positions, request.settings.num_frames)
        part = self.generate(request, progress, cancel, preview)
        return ContinuationResult(part, self.join(Path(request.video), part.video_path))

    def join(self, original: Path, part_video: Path) -> JoinedVideo:
        """Write ``original`` joined to ``part_video``, a continuation of it in the output folder (its settings
        JSON beside it says which frames repeat the original)."""
        return write_joined(self.outputs, original, part_video, json.loads(part_video.with_suffix(".json").read_text()))

    # -- ranks under torchrun --------------------------------------------------------------------
    def _sampler(self, c: PusaComponents, s: Settings) -> Sampler:
        """How this job samples: here alone, or sent to every rank and sampled together."""
        assert self._loras is not None
        if not self.ranks.parallel:
            return local_sampler(c.transformer, self._loras)
        assert self._placement is not None
        self.ranks.check_in_step()
        if s.cfg == 1.0 and self._placement.cfg_degree == 2:
            raise PusaInputError(
                "cfg", f"these {self.ranks.world_size} ranks run cfg-parallel (one guidance pass each), and at cfg 1 "
                "there is no second pass; raise cfg above 1, or restart with --placement sequence-parallel for cfg 1"
            )

        def run(job: SamplingJob, callback: StepCallback, cancel: threading.Event | None,
                deadline: Deadline | None) -> SampleResult:
            with self.ranks.job(job.to(torch.device("cpu"))):
                return self._sample_on_ranks(c, job, callback, cancel, deadline)

        return run

    def _sample_on_ranks(self, c: PusaComponents, job: SamplingJob, callback: StepCallback | None,
                         cancel: threading.Event | None, deadline: Deadline | None) -> SampleResult:
        """Every rank: this job's LoRAs, then the loop with the placement's guidance, stopping together."""
        guidance, loras, s = self._guidance, self._loras, job.settings
        assert guidance is not None and loras is not None
        guidance.failure = None
        # A failure here is kept, not raised: the first step's agreement ends the job on every rank.
        guidance.attempt(loras.use, s)
        guidance.attempt(self.ranks.before_sampling, s, c.transformer)
        try:
            return sample(c.transformer, job.noise, job.cond_latents, job.multipliers, job.positive, job.negative,
                          s.steps, s.cfg, s.shift, callback=callback, cancel=cancel, deadline=deadline,
                          guidance=guidance)
        except RanksOutOfStep:
            raise
        except Exception as error:
            if error is guidance.agreed_stop or isinstance(error, PusaInputError):
                raise
            raise self.ranks.out_of_step(error) from error  # a collective failed or timed out

    def follow(self, say: Callable[[str], None] = lambda text: None) -> None:
        """A follower rank: load the models, then run each job rank 0 sends until it leaves.

        Raises RuntimeError when the models do not load, and :class:`RanksOutOfStep` when a
        collective fails; a job that all ranks stopped together is told to ``say`` and the next awaited.
        """
        self._load()
        components, devices = self._components, self._devices
        if components is None or devices is None:
            raise RuntimeError(self._message)
        say(self._message)

        def run(job: SamplingJob) -> None:
            try:
                self._sample_on_ranks(components, job.to(devices.transformer_device), None, None, None)
            except RanksOutOfStep:
                raise
            except Exception as error:  # stopped on every rank; rank 0 reports it to its user
                say(f"job stopped: {type(error).__name__}: {error}")

        self.ranks.follow(run)
