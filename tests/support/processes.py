"""The repository root, the environment and ports for running its code in a child process, and forked ranks."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[2]
# No telemetry, one OpenMP thread, and the repository importable from any working directory.
_QUIET_ENV = {"HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def python_env(**extra: str) -> dict[str, str]:
    """This process's environment made quiet for a child Python, plus ``extra``."""
    return {**os.environ, **_QUIET_ENV, **extra}


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released): for a server to take, or for a
    client to find closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(main: Callable[..., None], args: tuple[Any, ...], size: int, seconds: float, what: str) -> None:
    """Run ``main(rank, *args)`` in ``size`` forked processes; fail the test, killing them, past ``seconds``."""
    ranks = mp.start_processes(main, args=args, nprocs=size, join=False, start_method="fork")
    deadline = time.monotonic() + seconds
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"{what} was still running after {seconds} s")
