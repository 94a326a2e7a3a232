"""The app served in-process on a free port, over a given engine, as the client and browser tests use it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gradio_client import Client, handle_file

import app as app_module
from pusa_core.engine import Engine
from tests.support.processes import ROOT, free_port
from ui.blocks import build_app

EXAMPLES = ROOT / "examples"
SMALL = {"size": "96x64", "frames": 9, "steps": 2}  # width != height so a swap would show


@dataclass
class Server:
    client: Client
    engine: Engine
    output_dir: Path
    url: str


def serve(engine: Engine, output_dir: Path, flags: Sequence[str] = (), notice: str = "") -> tuple[object, str]:
    """Build the page for ``engine`` and serve it on a free port with the app's own launch; returns (demo, url)."""
    demo = build_app(engine, notice)
    port = free_port()
    args = app_module.parse_args(["--host", "127.0.0.1", "--port", str(port), "--output-dir", str(output_dir), *flags])
    app_module.launch(demo, args, block=False)
    return demo, f"http://127.0.0.1:{port}/"


@contextmanager
def served(engine: Engine, output_dir: Path, flags: Sequence[str] = ()) -> Iterator[Server]:
    """The app over a loaded ``engine`` with a connected client, closed afterwards."""
    assert engine.wait_ready(120).state == "ready"
    demo, url = serve(engine, output_dir, flags)
    try:
        yield Server(Client(url, verbose=False), engine, output_dir, url)
    finally:
        demo.close()


def task_inputs(task: str) -> dict:
    """A good request for ``task`` through gradio_client."""
    if task == "i2v":
        return {"image": handle_file(EXAMPLES / "sunset.png"), "prompt": "the sun sets over the sea"}
    if task == "multiframe":
        images = [handle_file(EXAMPLES / "ball_start.png"), handle_file(EXAMPLES / "ball_end.png")]
        return {"images": images, "prompt": "a red ball rolls", "positions": "0,2", "multipliers": "0.2,0.5"}
    if task == "v2v":
        video = handle_file(EXAMPLES / "square.mp4")
        return {"video": video, "prompt": "a blue square moves", "positions": "0,1", "multipliers": "0.0,0.3"}
    return {"prompt": "a red ball bounces on the grass"}
