"""The examples each tab offers, chosen for the loaded model.

The 14B gets the pictures in ``examples/`` (a sunset, a rolling ball, a moving square). A small model
knows only the clips it was trained on, so it gets its own captions (``example_prompts`` in its
``defaults.json``) with start frames, end frames and clips drawn for them by the training data
generator, written once per process into a private folder of the system's temp directory (which
gradio may serve), removed when the process ends.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pusa_core.engine import Engine
from pusa_core.training.examples import ExampleMedia, known_words, write_examples

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
BIG_T2V_PROMPTS = (
    "a red ball bounces on a green field under a blue sky",
    "a cat walks slowly across a sunny room",
)


@dataclass(frozen=True)
class ExampleSet:
    """Inputs for every tab's examples; each tab adds its own positions and multipliers."""

    stills: tuple[tuple[str, str], ...]  # (image, prompt) for Image-to-Video
    keyframes: tuple[tuple[str, str, str], ...]  # (start image, end image, prompt) for Multi-Frames
    clips: tuple[tuple[str, str], ...]  # (video, prompt) for Video-to-Video
    prompts: tuple[str, ...]  # Text-to-Video
    small: bool = False  # drawn for a small model: its own multipliers and positions apply


def big_examples(folder: Path = EXAMPLES_DIR) -> ExampleSet:
    """The 14B's examples, from the pictures shipped in ``folder``."""
    return ExampleSet(
        stills=((str(folder / "sunset.png"), "the sun sets slowly over the sea, gentle waves"),),
        keyframes=((str(folder / "ball_start.png"), str(folder / "ball_end.png"),
                    "a red ball rolls across the green grass from left to right"),),
        clips=((str(folder / "square.mp4"), "a blue square moves across a white background"),),
        prompts=BIG_T2V_PROMPTS,
    )


@lru_cache(maxsize=4)
def _drawn(prompts: tuple[str, ...], fps: float) -> tuple[tempfile.TemporaryDirectory, list[ExampleMedia]]:
    """One folder per process and set of captions (every page built reuses it), deleted at exit with its holder."""
    folder = tempfile.TemporaryDirectory(prefix="pusa-small-examples-")
    return folder, write_examples(Path(folder.name), prompts, fps)


def small_examples(prompts: tuple[str, ...], fps: float) -> ExampleSet:
    """A small model's examples: every prompt with the frames and clip it describes."""
    media = _drawn(tuple(prompts), float(fps))[1]
    return ExampleSet(
        stills=tuple((str(m.start), m.prompt) for m in media),
        keyframes=tuple((str(m.start), str(m.end), m.prompt) for m in media),
        clips=tuple((str(m.clip), m.prompt) for m in media),
        prompts=tuple(prompts),
        small=True,
    )


def examples_for(engine: Engine, folder: Path = EXAMPLES_DIR) -> ExampleSet:
    """The examples that fit ``engine``'s model: its own prompts when it ships some, else the 14B's."""
    prompts = engine.example_prompts()
    if engine.status().is_small and prompts:
        return small_examples(prompts, engine.defaults().fps)
    return big_examples(folder)


def words_markdown() -> str:
    """What the small model can read, for the page's header accordion."""
    words = known_words()
    lines = [f"- **{what}**: {', '.join(items)}" for what, items in words.items()]
    return (
        "**The words the small model knows.** It was trained only on captions of one shape moving on a background, "
        "like *a red circle moves right on a blue background* or *a yellow square moves down and bounces back on a "
        "striped gray background*; other words mean nothing to it.\n\n" + "\n".join(lines)
    )
