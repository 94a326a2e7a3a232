"""Test hook (``PUSA_TEST_FAULT_HOOK=tests.support.faulty_rank``, set only by the tests): one rank fails mid-job.

A job whose prompt contains ``fail on rank N`` raises ``RuntimeError("injected failure on rank N")``
on rank N at the transformer's second call, inside the denoising loop; other jobs run as usual.
"""

from __future__ import annotations

from typing import Any

import torch


def on_job(rank: int, settings: Any, transformer: torch.nn.Module) -> None:
    if f"fail on rank {rank}" not in settings.prompt:
        return
    calls = [0]

    def fail(*args: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            handle.remove()
            raise RuntimeError(f"injected failure on rank {rank}")

    handle = transformer.register_forward_pre_hook(fail)
