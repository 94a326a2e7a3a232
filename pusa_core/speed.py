"""GPU speed options: diffusers' attention backends and regional compilation of the repeated block.

The attention backend goes through diffusers' dispatcher (``set_attention_backend``), which every Wan
attention processor calls; ``--compile`` compiles each transformer block on its own
(``compile_repeated_blocks``): the 40 blocks of the 14B share one compiled graph, so it compiles in
the time of one block.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

from .errors import PusaInputError
from .facts import ATTENTION_BACKEND_FLAG, DEFAULT_ATTENTION_BACKEND


def _requirement_problem(backend: AttentionBackendName) -> str | None:
    """diffusers' own reason ``backend`` cannot run here (a missing package), or None.

    Its private check is used because the public entry points also download Hub kernels.
    """
    try:
        _check_attention_backend_requirements(backend)
    except RuntimeError as err:
        return str(err)
    return None


def available_attention_backends() -> list[str]:
    """diffusers' attention backends whose packages are installed here, ``native`` first.

    The ones diffusers names with a leading underscore (``_native_cudnn``, ``_native_flash``) pin one
    torch kernel; they are offered too.
    """
    usable = [b.value for b in AttentionBackendName if _requirement_problem(b) is None]
    return sorted(usable, key=lambda name: name != DEFAULT_ATTENTION_BACKEND)


def check_attention_backend(name: str) -> str:
    """``name`` when diffusers can run it here; otherwise a refusal that lists the available ones."""
    available = available_attention_backends()
    if name in available:
        return name
    listed = f"available here: {', '.join(available)}"
    try:
        backend = AttentionBackendName(name)
    except ValueError:
        raise PusaInputError(ATTENTION_BACKEND_FLAG, f"{name!r} is not a diffusers attention backend; {listed}") from None
    why = _requirement_problem(backend)
    raise PusaInputError(ATTENTION_BACKEND_FLAG, f"{name!r} cannot run here ({why}); {listed}")


def apply_speed_options(transformer: torch.nn.Module, attention_backend: str, compile_blocks: bool) -> None:
    """Set the attention backend and compile each block when asked.

    Set even when it is native: diffusers also keeps a process-wide active backend, which an earlier
    model's choice would otherwise leave to this one.
    """
    transformer.set_attention_backend(check_attention_backend(attention_backend))
    if compile_blocks:
        transformer.compile_repeated_blocks()
