"""The transformer stages' training set: VAE latents and text embeddings, computed once.

One safetensors file: ``latents`` ``[N, 16, F, h, w]`` (normalized, as :func:`pusa_core.latents.encode_pixels`
returns them), ``context`` ``[N, L, D]`` (:func:`pusa_core.text.encode_prompts` of each caption) and
``negative`` ``[1, L, D]`` (the empty prompt, used for caption dropout so classifier-free guidance
works). Optional ``weights`` ``[N, 1, F, h, w]`` scale the flow loss per latent position (the small
model's procedural clips mark where the object is). For the 14B, write the same file from your own
clips with those two functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


@dataclass(frozen=True)
class LatentCache:
    latents: torch.Tensor
    context: torch.Tensor
    negative: torch.Tensor
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.latents.ndim != 5:
            raise ValueError(f"latents must be [N, C, F, h, w], got {list(self.latents.shape)}")
        if self.context.ndim != 3 or self.context.shape[0] != self.latents.shape[0]:
            raise ValueError(
                f"context must be [N, L, D] with N = {self.latents.shape[0]} (one per clip), got {list(self.context.shape)}"
            )
        if self.negative.shape != (1, *self.context.shape[1:]):
            expected = [1, *self.context.shape[1:]]
            raise ValueError(f"negative must be {expected} (the empty prompt's embedding), got {list(self.negative.shape)}")
        if self.weights is not None:
            expected = [self.latents.shape[0], 1, *self.latents.shape[2:]]
            if list(self.weights.shape) != expected:
                raise ValueError(f"weights must be {expected} (one per latent position), got {list(self.weights.shape)}")

    def __len__(self) -> int:
        return self.latents.shape[0]

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tensors = {"latents": self.latents, "context": self.context, "negative": self.negative}
        if self.weights is not None:
            tensors["weights"] = self.weights
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> LatentCache:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latent cache not found: {path} (make it with the 'encode' stage)")
        tensors = load_file(str(path))
        missing = {"latents", "context", "negative"} - set(tensors)
        if missing:
            raise ValueError(f"{path} is not a latent cache: missing {sorted(missing)}")
        return cls(tensors["latents"], tensors["context"], tensors["negative"], tensors.get("weights"))
