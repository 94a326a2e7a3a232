"""The one object the UI talks to: loads the models in the background, reports status, runs jobs.

The engine owns the model lifecycle (load, place, status, defaults); a job itself is
:class:`~pusa_core.job.JobRunner`'s. One job runs at a time, and input is validated before the model
is even loaded, so a bad request is answered at once.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from . import facts
from .adapters import LoraCatalog, LoraStack, attach_loras, merge_blocker
from .conditioning import plan_request
from .errors import EngineNotReady, PusaInputError
from .facts import DEFAULT_ATTENTION_BACKEND, DEFAULT_NOISE_MULTIPLIER
from .job import GenerationResult, JobRunner, Progress, ProgressCallback
from .loading import PusaComponents, load_components, source_defaults
from .outputs import OutputFolder, Retention
from .placement import REFERENCE_JOB, JobSize, Placement, PlanOptions, StageDevices, apply_placement, choose_placement, detect_gpus, plan_job
from .requests import Request, Settings, preset_settings
from .speed import apply_speed_options, check_attention_backend
from .weights import ModelSource

__all__ = ["Engine", "EngineStatus", "GenerationResult", "OutOfMemory", "Progress", "ProgressCallback"]


def _architecture(config: Any) -> dict[str, Any]:
    """A model config without diffusers' bookkeeping keys (``_name_or_path`` may be a Path)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message says what to lower. The engine stays usable."""


@dataclass(frozen=True)
class EngineStatus:
    state: Literal["loading", "ready", "failed"]
    message: str
    model_name: str
    is_small: bool
    placement: str


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
    ) -> None:
        """``max_job_seconds``: a job's time limit (None: none); ``clock`` measures it (tests inject one)."""
        self.jobs = JobRunner(OutputFolder(Path(output_dir), retention), max_job_seconds, clock)
        self.speed = speed
        self._loras: LoraStack | None = None
        self._loader = loader
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

    @classmethod
    def from_source(
        cls, source: ModelSource, output_dir: Path = Path("outputs"), placement: str | None = None, fp8: bool = False,
        retention: Retention = Retention(),
        max_job_seconds: float | None = None,
        speed: SpeedOptions = SpeedOptions(),
    ) -> Engine:
        """An engine that loads ``source`` when started. ``placement`` overrides the automatic choice."""
        return cls(
            lambda: load_components(source), output_dir, source.name, source.is_small,
            placement=placement, fp8=fp8, defaults=source_defaults(source), retention=retention,
            max_job_seconds=max_job_seconds, speed=speed,
        )

    @classmethod
    def from_components(
        cls, components: PusaComponents, output_dir: Path = Path("outputs"), placement: str | None = None,
        retention: Retention = Retention(),
        max_job_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        speed: SpeedOptions = SpeedOptions(),
    ) -> Engine:
        return cls(
            lambda: components, output_dir, components.name, components.is_small, placement,
            defaults=components.defaults, retention=retention, max_job_seconds=max_job_seconds, clock=clock,
            speed=speed,
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
        except Exception as err:  # any load failure must reach the status line, not kill the app
            self._state, self._message = "failed", f"could not load {self._model_name}: {err}"
            return
        self._components = components
        self._state = "ready"
        self._message = (
            f"{components.name} ready (loaded in {time.perf_counter() - t0:.1f} s); {self._loras.describe()}"
        )

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
        placement = choose_placement(detect_gpus(), job=job, requested=self._requested_placement, options=options)
        return placement, apply_placement(placement, c.transformer, c.text_encoder, c.vae)

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
        return EngineStatus(self._state, self._message, self._model_name, self._is_small, where)

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

    def default_noise_multiplier(self) -> float:
        return self._components.noise_multiplier if self._components is not None else DEFAULT_NOISE_MULTIPLIER

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
    def generate(
        self, request: Request, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
        preview: bool = False,
    ) -> GenerationResult:
        """Run one job to an MP4; with ``preview``, denoising progress carries a picture of the video forming.

        Raises PusaInputError, GenerationCancelled, JobTimedOut, EngineNotReady or OutOfMemory.
        """
        plan = plan_request(request)  # validation first: bad input is answered even while loading
        self.speed.loras.check(request.settings)
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
                    components, self._placement, self._devices, self._loras, request, plan,
                    progress or (lambda p: None), cancel, preview,
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
