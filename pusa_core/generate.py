"""Generate videos from a script: one job from flags, or a batch from a JSON-lines file.

    python -m pusa_core.generate --task i2v --image examples/sunset.png \\
        --prompt "the sun sets slowly over the sea" --seed 42 --out sunset.mp4
    python -m pusa_core.generate --jobs jobs.jsonl --steps 20     # flags are every line's defaults

Names and validation are the API's. A job line is a JSON object with the flags' names: ``task``,
``prompt``, ``negative_prompt``, ``image``, ``images`` (a list), ``video``, ``positions``,
``multipliers``, ``frames_from`` (v2v: ``first`` or ``last``), ``noise_multiplier``, ``steps``, ``cfg``, ``alpha`` (or ``lora_alpha``), ``seed``
(null: random), ``size`` ("WxH"), ``frames``, ``fps``, ``fit``, ``step_cache`` and ``out``. What neither the line
nor the flags give takes the model's defaults, as on the page. Media paths are relative to the
current folder. Every job is checked before the model loads.

Each job writes ``OUT.mp4`` and ``OUT.json``: the app's video and settings (also in the MP4's
metadata). The engine writes them into a private temporary folder and they are moved into place
when complete, so ``OUT`` never holds half a video; an existing ``OUT.mp4`` or ``OUT.json`` is
refused unless ``--overwrite``. A job without ``out`` is saved in ``--output-dir`` under the
engine's own name (``<task>_<time>_seed<seed>.mp4``).

stdout gets one line per finished job, ``path<TAB>seconds<TAB>seed``; stderr gets progress and
errors, each refused input as one line ``generate: <field>: <message>`` (``generate:
<file>:<line>: <field>: <message>`` for a job line). Exit status: 0 when every job was written, 2
when a flag or a job's input was refused (a bad flag stops everything; a bad job line only that
job), 1 when a job failed otherwise (the model did not load, out of memory).

torchrun: the command runs unchanged under ``torchrun --nproc-per-node N`` (cfg-parallel or
sequence-parallel; ``--collective-timeout`` / ``PUSA_COLLECTIVE_TIMEOUT`` bounds how long a rank
waits for the others). Only rank 0 writes files and prints. The rank is torch.distributed's when a
process group is initialised, else torchrun's ``RANK`` from the environment, else 0. Every rank
checks the same jobs and loads the model; rank 0 runs them, and the other ranks run each one with
it as it is sent (:mod:`pusa_core.ranks`) until rank 0 is done. A refused input gives every rank
rank 0's exit status; a job that fails is rank 0's to report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

import torch.distributed as dist

from .cache_choice import offered_step_caches
from .conditioning import parse_multipliers, parse_number, parse_positions, parse_size, plan_request, validate_settings
from .engine import Engine, OutOfMemory, Progress
from .errors import EngineNotReady, GenerationCancelled, JobTimedOut, PusaInputError
from .parallel import RankFailed, RanksOutOfStep
from .model_choice import MODELS, choose_engine
from .outputs import OutputFolder
from .placement import KINDS as PLACEMENT_KINDS
from .ranks import TIMEOUT_ENV, TIMEOUT_FLAG, Ranks, check_launch, collective_timeout, launched_ranks
from .requests import TASKS, Request, Settings, request_from_dict
from .weights import DEFAULT_WEIGHTS_DIR, WeightsError

PROG = "python -m pusa_core.generate"
# Settings fields by the name the flags, the API and job lines give them.
SETTINGS_NAMES = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "steps": "steps", "cfg": "cfg",
    "alpha": "lora_alpha", "frames": "num_frames", "fps": "fps", "fit": "fit", "step_cache": "step_cache",
}
TEXT_NAMES = ("prompt", "negative_prompt", "fit", "step_cache")
# The inputs each task takes besides its settings (the request classes' own fields).
TASK_INPUTS = {task: tuple(f.name for f in fields(cls) if f.name not in ("task", "settings")) for task, cls in TASKS.items()}
INPUT_NAMES = tuple(dict.fromkeys(name for names in TASK_INPUTS.values() for name in names))
JOB_NAMES = ("task", *SETTINGS_NAMES, "lora_alpha", "size", *INPUT_NAMES, "out")
# Engine field names the command line calls otherwise.
CLI_NAMES = {"num_frames": "frames", "lora_alpha": "alpha", "width": "size", "height": "size"}
FLAG_ONLY = ("jobs", "overwrite", "model", "weights_dir", "base_dir", "lora", "placement", "fp8", "output_dir",
             "collective_timeout")
INPUT_FAILED, JOB_FAILED = 2, 1


@dataclass(frozen=True)
class JobSpec:
    """One job's values as given (strings from flags, JSON values from a line), and where they came from."""

    values: dict[str, Any]
    place: str | None  # "<file>:<line>" for a job line; None for the flags


@dataclass(frozen=True)
class Job:
    request: Request
    out: Path | None
    place: str | None


@dataclass(frozen=True)
class Refused:
    """A job that will not run, and why."""

    err: PusaInputError
    place: str | None


class Console:
    """What this process says: everything on rank 0, nothing on the other ranks."""

    def __init__(self, speaks: bool) -> None:
        self.speaks = speaks

    def note(self, text: str) -> None:
        """Progress and errors, on stderr."""
        if self.speaks:
            print(text, file=sys.stderr, flush=True)

    def result(self, text: str) -> None:
        """One finished job, on stdout."""
        if self.speaks:
            print(text, flush=True)


def process_rank() -> int:
    """This process's rank as torch.distributed numbers it: the process group's, else torchrun's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    text = os.environ.get("RANK", "0")
    if not text.isdigit():
        raise PusaInputError("RANK", f"{text!r} is not a rank; torchrun sets it to 0, 1, ...; unset it to run alone")
    return int(text)


def error_line(err: PusaInputError, place: str | None) -> str:
    """``generate: --frames: must be ...`` for a flag, ``generate: jobs.jsonl:3: frames: must be ...`` for a line."""
    base, bracket, rest = err.field.partition("[")
    name = CLI_NAMES.get(base, base) + bracket + rest
    message = f"{base} {err.message}" if base in ("width", "height") else err.message
    if place is not None:
        return f"generate: {place}: {name}: {message}"
    is_flag = CLI_NAMES.get(base, base) in (*JOB_NAMES, *FLAG_ONLY)
    return f"generate: {'--' + name.replace('_', '-') if is_flag else name}: {message}"


# -- flags ----------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose refusals are PusaInputErrors naming the flag, so they print as one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown:
            raise PusaInputError(unknown.group(1), f"is not a flag of this command; see {PROG} --help")
        argument = re.match(r"argument ([^:/ ]+)[^:]*: (.*)", message)
        if argument:
            raise PusaInputError(argument.group(1), argument.group(2))
        raise PusaInputError("arguments", message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG, description="Generate Pusa V1 videos from the command line: one job, or one per line of --jobs.",
        epilog="stdout: one line per finished job, path<TAB>seconds<TAB>seed. Exit status: 0 all written, "
               "2 an input was refused, 1 a job failed otherwise. Under torchrun only rank 0 writes and prints.",
    )
    job = p.add_argument_group("the job (with --jobs: every line's defaults; what is not given takes the model's defaults)")
    job.add_argument("--task", choices=tuple(TASKS), help="what to make; a job line may give its own")
    job.add_argument("--prompt", help="what happens in the video (needed for t2v)")
    job.add_argument("--negative-prompt", dest="negative_prompt", help="what to avoid (default: the reference's list)")
    media = job.add_mutually_exclusive_group()
    media.add_argument("--image", metavar="A.png", help="i2v: the first frame")
    media.add_argument("--images", nargs="+", metavar="A.png", help="multiframe: one image per position")
    media.add_argument("--video", metavar="V.mp4", help="v2v: the video whose frames fill the positions")
    job.add_argument("--positions", metavar="0,20", help="multiframe, v2v: latent frame indices")
    job.add_argument("--multipliers", metavar="0.2,0.5", help="multiframe, v2v: one noise multiplier (0..1) per position")
    job.add_argument("--frames-from", dest="frames_from", metavar="{first,last}",
                     help="v2v: take the positions' frames from the video's first frames (default) or its last")
    job.add_argument("--noise-multiplier", dest="noise_multiplier", metavar="M", help="i2v: the image's noise multiplier")
    job.add_argument("--steps", help="denoising steps")
    job.add_argument("--cfg", help="guidance scale (1 turns it off)")
    job.add_argument("--alpha", help="LoRA alpha")
    job.add_argument("--seed", help="random seed (default: a random one, reported)")
    job.add_argument("--size", metavar="WxH", help="e.g. 832x480")
    job.add_argument("--frames", help="frame count, 4k+1")
    job.add_argument("--fps", help="frames per second of the MP4")
    job.add_argument("--fit", metavar="{crop,pad}", help="how inputs are fitted to the size")
    job.add_argument("--step-cache", dest="step_cache", metavar="KIND:THRESHOLD",
                     help=f"skip transformer work between steps: off (default) or one of {', '.join(offered_step_caches()[1:]) or 'none measured'}")
    job.add_argument("--out", metavar="OUT.mp4", help="write OUT.mp4 and OUT.json (default: --output-dir)")
    run = p.add_argument_group("the run")
    run.add_argument("--jobs", type=Path, metavar="FILE.jsonl", help="one job per line, a JSON object with the names above")
    run.add_argument("--overwrite", action="store_true", help="replace an existing OUT.mp4 / OUT.json")
    run.add_argument("--output-dir", dest="output_dir", type=Path, default=Path("outputs"),
                     help="where jobs without an out go (default: outputs)")
    run.add_argument("--model", choices=MODELS, default="auto",
                     help="auto: the 14B model when its files are complete, else the small one; random-tiny: untrained")
    run.add_argument("--weights-dir", dest="weights_dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    run.add_argument("--base-dir", dest="base_dir", type=Path, help="a Wan2.1-T2V-14B folder (diffusers or original layout)")
    run.add_argument("--lora", type=Path, help="the Pusa V1 LoRA file (pusa_v1.pt)")
    run.add_argument("--placement", choices=PLACEMENT_KINDS, help="where the model runs (default: chosen for this machine)")
    run.add_argument("--fp8", action="store_true", help="store the 14B transformer's weights in fp8")
    run.add_argument(TIMEOUT_FLAG, dest="collective_timeout", metavar="SECONDS",
                     help=f"under torchrun: how long a rank waits for the others (default 300; env {TIMEOUT_ENV})")
    return p


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The job flags that were given, by their job-line names."""
    return {name: getattr(args, name) for name in JOB_NAMES if getattr(args, name, None) is not None}


# -- values -> a request ----------------------------------------------------------------------------------
def _media_file(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise PusaInputError(field, f"must be a file path, got {value!r}")
    if not Path(value).is_file():
        raise PusaInputError(field, f"{value} was not found")
    return value


def _media_files(value: Any, field: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value:
        raise PusaInputError(field, f'must be a list of image files, e.g. ["a.png", "b.png"], got {value!r}')
    return [_media_file(item, f"{field}[{i}]") for i, item in enumerate(value, 1)]


INPUT_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "image": _media_file,
    "images": _media_files,
    "video": _media_file,
    "positions": parse_positions,
    "multipliers": parse_multipliers,
    "noise_multiplier": parse_number,
    "frames_from": lambda value, field: value,  # the request's check names the choices
}
OPTIONAL_INPUTS = ("frames_from",)  # left out, the request's own default


def settings_from(values: dict[str, Any], defaults: Settings) -> Settings:
    """``defaults`` with the given values read in (numbers from text, ``size`` split); ranges are checked later."""
    out = asdict(defaults)
    for name, field in SETTINGS_NAMES.items():
        if name not in values:
            continue
        value = values[name]
        random_seed = name == "seed" and value is None
        out[field] = value if name in TEXT_NAMES or random_seed else parse_number(value, field)
    if "size" in values:
        out["width"], out["height"] = parse_size(values["size"])
    return Settings(**out)


def check_defaults(values: dict[str, Any], defaults: Settings) -> None:
    """The flags of a ``--jobs`` run on their own: every value must be valid before any line uses it."""
    if "out" in values:
        raise PusaInputError("out", 'names one video; with --jobs give each line its own "out" (or none, for --output-dir)')
    validate_settings(settings_from(values, defaults))
    for name in INPUT_NAMES:
        if name in values:
            INPUT_PARSERS[name](values[name], name)


def request_from(values: dict[str, Any], defaults: Settings, noise_multiplier: float) -> Request:
    """A validated request from one job's values; raises PusaInputError naming the field."""
    task = values.get("task")
    if task is None:
        raise PusaInputError("task", f"is missing; give one of {', '.join(TASKS)}")
    if task not in TASKS:
        raise PusaInputError("task", f"{task!r} is not a task; use one of {', '.join(TASKS)}")
    own = TASK_INPUTS[task]
    for name in INPUT_NAMES:
        if name in values and name not in own:
            takes = ", ".join(own) if own else "only the prompt and the settings"
            raise PusaInputError(name, f"is not used by {task}, which takes {takes}")
    data: dict[str, Any] = {"task": task, "settings": asdict(settings_from(values, defaults))}
    for name in own:
        if name in values:
            data[name] = INPUT_PARSERS[name](values[name], name)
        elif name == "noise_multiplier":
            data[name] = noise_multiplier  # the model's own
        elif name not in OPTIONAL_INPUTS:
            raise PusaInputError(name, f"is missing; {task} needs it")
    request = request_from_dict(data)
    plan_request(request)
    return request


def _taken(path: Path, overwrite: bool) -> None:
    for target in (path, path.with_suffix(".json")):
        if target.exists() and not overwrite:
            raise PusaInputError("out", f"{target} exists; pass --overwrite to replace it, or choose another name")


def out_from(values: dict[str, Any], overwrite: bool) -> Path | None:
    if "out" not in values:
        return None
    value = values["out"]
    if not isinstance(value, str) or not value.lower().endswith(".mp4"):
        raise PusaInputError("out", f"must be a file name ending in .mp4, got {value!r}")
    out = Path(value)
    _taken(out, overwrite)
    return out


def read_job_lines(path: Path, defaults: dict[str, Any]) -> list[JobSpec | Refused]:
    """One spec per non-blank line (the flags' values under the line's), or why that line is refused."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PusaInputError("jobs", f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    specs: list[JobSpec | Refused] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        place = f"{path}:{number}"
        try:
            specs.append(JobSpec({**defaults, **_line_values(line)}, place))
        except PusaInputError as err:
            specs.append(Refused(err, place))
    if not specs:
        raise PusaInputError("jobs", f"{path} has no jobs; write one JSON object per line")
    return specs


def _line_values(line: str) -> dict[str, Any]:
    try:
        values = json.loads(line)
    except json.JSONDecodeError as err:
        raise PusaInputError("json", f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(values, dict):
        raise PusaInputError("json", f'must be a JSON object like {{"task": "t2v", "prompt": "..."}}, got {line.strip()[:40]}')
    unknown = [key for key in values if key not in JOB_NAMES]
    if unknown:
        raise PusaInputError(unknown[0], f"is not a job field; use {', '.join(JOB_NAMES)}")
    if "lora_alpha" in values:
        if "alpha" in values:
            raise PusaInputError("alpha", 'is given twice, as "alpha" and as "lora_alpha"; give one')
        values["alpha"] = values.pop("lora_alpha")
    return values


def build_jobs(
    specs: Sequence[JobSpec | Refused], defaults: Settings, noise_multiplier: float, overwrite: bool
) -> list[Job | Refused]:
    """Each spec's job, or why it is refused, in order; two jobs may not write the same file."""
    out: list[Job | Refused] = []
    writers: dict[Path, str | None] = {}
    for spec in specs:
        if isinstance(spec, Refused):
            out.append(spec)
            continue
        try:
            job = Job(request_from(spec.values, defaults, noise_multiplier), out_from(spec.values, overwrite), spec.place)
            if job.out is not None:
                key = job.out.resolve()
                if key in writers:
                    raise PusaInputError("out", f"{job.out} is written by {writers[key] or 'the flags'} already")
                writers[key] = spec.place
            out.append(job)
        except PusaInputError as err:
            out.append(Refused(err, spec.place))
    return out


# -- running ----------------------------------------------------------------------------------------------
def _publish(video: Path, settings: Path, target: Path, overwrite: bool) -> None:
    """Move a finished MP4 and its JSON to ``target`` (.mp4 / .json), each appearing whole (settings first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _taken(target, overwrite)
    for source, final in ((settings, target.with_suffix(".json")), (video, target)):
        partial = final.with_name(f".{final.name}.partial")
        shutil.move(source, partial)  # a copy when the temporary folder is on another disk
        os.replace(partial, final)


def _progress_printer(console: Console, label: str) -> Callable[[Progress], None]:
    last = [""]

    def show(p: Progress) -> None:
        if p.message == last[0]:
            return
        last[0] = p.message
        eta = f", about {round(p.eta_seconds)} s left" if p.eta_seconds is not None else ""
        console.note(f"{label} {p.message}{eta}")

    return show


def run_jobs(engine: Engine, jobs: Sequence[Job], console: Console, output_dir: Path, overwrite: bool) -> int:
    """Run ``jobs`` one after the other; a failed job is reported and the next one runs. Returns the exit status."""
    status = 0
    for i, job in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}]"
        s = job.request.settings
        origin = f" ({job.place})" if job.place else ""
        console.note(f"{label} {job.request.task}{origin}, {s.width}x{s.height}, {s.num_frames} frames, {s.steps} steps -> "
                     f"{job.out or output_dir}")
        try:
            result = engine.generate(job.request, _progress_printer(console, label))
            target = job.out or OutputFolder(output_dir).video_path(job.request.task, result.seed)
            _publish(result.video_path, result.settings_path, target, overwrite)
        except PusaInputError as err:
            console.note(error_line(err, job.place))
            status = status or INPUT_FAILED
            continue
        except (OutOfMemory, JobTimedOut, EngineNotReady, GenerationCancelled, RankFailed, RanksOutOfStep) as err:
            console.note(f"generate: {job.place or 'job'}: {err}")
            status = JOB_FAILED
            continue
        console.result(f"{target}\t{result.seconds:.1f}\t{result.seed}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (see the module docstring)."""
    try:
        rank = process_rank()
    except PusaInputError as err:
        print(error_line(err, None), file=sys.stderr)
        return INPUT_FAILED
    console = Console(speaks=rank == 0)
    try:
        args = build_parser().parse_args(argv)
    except PusaInputError as err:
        console.note(error_line(err, None))
        return INPUT_FAILED
    try:
        timeout = collective_timeout(args.collective_timeout or os.environ.get(TIMEOUT_ENV))
        check_launch(args.placement, launched_ranks())
    except PusaInputError as err:
        console.note(error_line(err, None))
        return INPUT_FAILED
    ranks = Ranks.join(timeout)
    try:
        with tempfile.TemporaryDirectory(prefix="pusa-generate-") as staging:
            return _run(args, console, Path(staging), ranks)
    finally:
        ranks.leave()


def _specs(args: argparse.Namespace, defaults: Settings) -> list[JobSpec | Refused]:
    flags = flag_values(args)
    if args.jobs is None:
        return [JobSpec(flags, None)]
    check_defaults(flags, defaults)
    return read_job_lines(args.jobs, flags)


def _run(args: argparse.Namespace, console: Console, staging: Path, ranks: Ranks) -> int:
    found: list[str] = []  # what the weights check says, told once the jobs are accepted
    try:
        choice = choose_engine(args.model, args.weights_dir, args.base_dir, args.lora, output_dir=staging,
                               placement=args.placement, fp8=args.fp8, say=found.append, ranks=ranks)
    except WeightsError as err:
        console.note(error_line(PusaInputError("model", " ".join(str(err).split())), None))
        return INPUT_FAILED
    engine = choice.engine
    try:
        specs = _specs(args, engine.defaults())
    except PusaInputError as err:
        console.note(error_line(err, None))
        return INPUT_FAILED
    # Every job is checked before the model loads: a 14B load takes minutes.
    accepted, status = _accepted(specs, engine, args.overwrite, console)
    if not accepted:
        return status
    for text in found:
        console.note(text)
    if choice.kind == "random":
        console.note(f"note: running a random, untrained tiny model: its videos are noise. {choice.reason}")
    if not ranks.leader:
        engine.follow()  # runs rank 0's jobs with it until rank 0 is done
        return status
    loaded = engine.wait_ready()
    if loaded.state != "ready":
        console.note(f"generate: model: {loaded.message}")
        return JOB_FAILED
    console.note(f"{loaded.message}; placement {loaded.placement}")
    # Built again with the loaded model's defaults (the small model's noise multiplier is read as it loads).
    accepted, late = _accepted([spec for spec, _ in accepted], engine, args.overwrite, console)
    jobs = [job for _, job in accepted]
    return run_jobs(engine, jobs, console, args.output_dir, args.overwrite) or late or status


def _accepted(
    specs: Sequence[JobSpec | Refused], engine: Engine, overwrite: bool, console: Console
) -> tuple[list[tuple[JobSpec, Job]], int]:
    """Each spec that makes a valid job with the engine's defaults, with its job; the refused ones are told."""
    accepted = []
    for spec, item in zip(specs, build_jobs(specs, engine.defaults(), engine.default_noise_multiplier(), overwrite)):
        if isinstance(item, Refused):
            console.note(error_line(item.err, item.place))
        elif isinstance(spec, JobSpec):
            accepted.append((spec, item))
    return accepted, INPUT_FAILED if len(accepted) < len(specs) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("generate: interrupted", file=sys.stderr)
        sys.exit(130)
