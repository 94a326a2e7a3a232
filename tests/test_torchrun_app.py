"""The app under ``torchrun --nproc-per-node 2`` on the CPU (gloo), as it is launched and stopped.

One launch per module: ``python -m torch.distributed.run --standalone --nproc-per-node 2 app.py
--model random-tiny`` with a short ``--collective-timeout`` and the test fault hook
(tests/support/faulty_rank.py). Jobs go through gradio_client. The tests run in file order; the
last one ends it: a stopped rank, then Ctrl-C to torchrun.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from pusa_core.engine import Engine
from pusa_core.media import read_video
from pusa_core.ranks import FAULT_HOOK_ENV
from pusa_core.tiny_models import random_tiny_components
from tests.support.processes import ROOT, free_port, python_env
from tests.support.server import SMALL, served, task_inputs
from tests.test_app_client import wait_until_running

TIMEOUT = 8  # --collective-timeout of the launch, in seconds
START_SECONDS = 150  # both ranks import torch, diffusers and gradio on a shared CPU


@dataclass
class Launch:
    process: subprocess.Popen
    client: Client
    output_dir: Path
    log: Path

    def ranks(self) -> dict[int, int]:
        """The worker processes torchrun started: rank -> pid."""
        pids = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
        found = {}
        for pid in pids:
            env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            found[int(env["RANK"])] = pid
        return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def connect(url: str, process: subprocess.Popen, log: Path) -> Client:
    """A client once the page answers and a first job runs (the ranks have loaded)."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"torchrun exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            client = Client(url, verbose=False)
            client.predict(**task_inputs("t2v"), **SMALL, api_name="/t2v")
            return client
        except Exception:  # not up, or the model not loaded yet
            time.sleep(1)
    pytest.fail(f"the app under torchrun did not serve a job within {START_SECONDS} s:\n{log.read_text()[-3000:]}")


@contextmanager
def launched(folder: Path) -> Iterator[Launch]:
    """The app under torchrun, serving; every process of it killed afterwards."""
    port, log = free_port(), folder / "log.txt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "app.py",
               "--model", "random-tiny", "--port", str(port), "--output-dir", str(folder / "outputs"),
               "--collective-timeout", str(TIMEOUT)]
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=python_env(**{FAULT_HOOK_ENV: "tests.support.faulty_rank"}),
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Launch(process, connect(f"http://127.0.0.1:{port}/", process, log), folder / "outputs", log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    with launched(tmp_path_factory.mktemp("torchrun")) as running:
        yield running


@pytest.fixture(scope="module")
def single_video(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The single-process app's video for the request the launch is sent."""
    folder = tmp_path_factory.mktemp("single")
    with served(Engine.from_components(random_tiny_components(), output_dir=folder), folder) as server:
        video = server.client.predict(**task_inputs("i2v"), **SMALL, seed=1234, randomize_seed=False, api_name="/i2v")[0]
    return read_video(video)[0]


def test_a_job_served_by_two_ranks_is_the_single_process_video(launch: Launch, single_video: np.ndarray) -> None:
    video, _, seed, message = launch.client.predict(**task_inputs("i2v"), **SMALL, seed=1234, randomize_seed=False,
                                                    api_name="/i2v")
    assert seed == 1234 and message.startswith("Done in ")
    got = read_video(video)[0]
    assert got.shape == single_video.shape == (9, 64, 96, 3)
    assert np.abs(got.astype(int) - single_video.astype(int)).max() <= 1
    assert (launch.output_dir / Path(video).name).is_file()


def test_cancel_stops_every_rank_and_the_next_job_runs(launch: Launch) -> None:
    job = launch.client.submit(**task_inputs("t2v"), size="192x192", frames=17, steps=50, api_name="/t2v")
    wait_until_running(job)
    assert launch.client.predict(api_name="/cancel") == "Cancelling: the job stops at the next denoising step."
    video, _, _, message = job.result(timeout=120)
    assert video is None and message.startswith("Cancelled"), message
    _, _, _, message = launch.client.predict(**task_inputs("t2v"), **SMALL, api_name="/t2v")
    assert message.startswith("Done in ")
    assert re.search(r"\[rank 1\] job stopped: GenerationCancelled: cancelled", launch.log.read_text())


def test_a_rank_failing_mid_job_is_told_on_the_page_and_the_next_job_runs(launch: Launch) -> None:
    with pytest.raises(AppError) as caught:
        launch.client.predict(prompt="a ball, fail on rank 1", **SMALL, api_name="/t2v")
    assert str(caught.value) == ("Rank 1 of 2 failed, so every rank stopped this job: RuntimeError: injected failure "
                                 "on rank 1. Nothing was saved; every rank is ready for the next job.")
    _, _, _, message = launch.client.predict(**task_inputs("t2v"), **SMALL, api_name="/t2v")
    assert message.startswith("Done in ")


def test_a_stopped_rank_shows_as_an_error_within_the_collective_timeout_and_ctrl_c_stops_every_rank(
    launch: Launch,
) -> None:
    workers = launch.ranks()
    os.kill(workers[1], signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(AppError) as caught:
            launch.client.predict(**task_inputs("t2v"), **SMALL, api_name="/t2v")
        waited = time.monotonic() - start
        assert str(caught.value).startswith(f"A rank did not answer within the {TIMEOUT} s collective timeout")
        assert "restart the app (every rank)" in str(caught.value)
        assert waited < 2 * TIMEOUT + 5
        # Ctrl-C reaches torchrun while a rank is still stopped: every rank must end all the same.
        assert launch.process.poll() is None
        launch.process.send_signal(signal.SIGINT)
    finally:
        os.kill(workers[1], signal.SIGCONT)
    assert launch.process.wait(60) != 0
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers.values())
