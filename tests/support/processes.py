"""The repository root, and the environment and ports for running its code in a child process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

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
