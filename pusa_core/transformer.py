"""The per-frame Wan transformer: Wan2.1 with one diffusion timestep per latent frame.

Pusa adds no parameters. Only the forward pass changes: the timestep is a vector ``[B, F]``, the
time embedding and 6-way modulation are computed once per frame (``[B, F, 6, D]``) and applied by
viewing the token sequence as ``[B, F, H'W', D]``. diffusers' own 2-D timestep path expands the
modulation to every token instead, which costs gigabytes per block on the 14B; this never does.
Parameter names are diffusers' own, so diffusers-format weights, peft LoRA, device maps, group
offloading and layerwise casting all apply unchanged.

Context parallelism (diffusers' ``enable_parallelism`` with a ``ContextParallelConfig``; see
``pusa_core.parallel``) splits the token sequence across ranks with this class's own ``_cp_plan``.
The ``[B, F]`` timestep and the ``[B, F, 6, D]`` modulation stay whole on every rank; each rank
modulates its slice of tokens by the frame each token belongs to (:class:`TokenSpan`), and a slice
may begin and end inside a frame. A token count that the degree does not divide is padded at the
end; padding tokens are masked out of self-attention and dropped from the output.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.models._modeling_parallel import (
    ContextParallelConfig,
    ContextParallelInput,
    ContextParallelOutput,
    ParallelConfig,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from diffusers.utils import apply_lora_scale


@dataclass(frozen=True)
class TokenSpan:
    """The tokens a rank holds: ``length`` tokens from ``start`` of a sequence of ``frames`` frames.

    Without context parallelism that is the whole sequence. With it, each rank holds one contiguous
    slice, which may begin and end inside a frame; the last slices may reach into the padding past
    ``frames * tokens_per_frame`` (``key_mask`` is then False there, and every rank has one).
    """

    start: int
    length: int
    tokens_per_frame: int
    frames: int
    key_mask: torch.Tensor | None = None  # [1, length] bool: which tokens self-attention may attend to

    @classmethod
    def whole(cls, frames: int, tokens_per_frame: int) -> TokenSpan:
        return cls(0, frames * tokens_per_frame, tokens_per_frame, frames)

    @property
    def _lead(self) -> int:  # tokens of the first frame that lie before the slice
        return self.start % self.tokens_per_frame

    @property
    def _frame_range(self) -> tuple[int, int]:
        first = self.start // self.tokens_per_frame
        return first, -(-(self.start + self.length) // self.tokens_per_frame)

    def by_frame(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, length, D]`` as ``[B, n, T, D]``: whole frames, the partial ones padded at their missing side."""
        first, stop = self._frame_range
        tail = stop * self.tokens_per_frame - self.start - self.length
        if self._lead or tail:
            x = F.pad(x, (0, 0, self._lead, tail))
        return x.reshape(x.shape[0], stop - first, self.tokens_per_frame, x.shape[-1])

    def tokens(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`by_frame`."""
        y = y.flatten(1, 2)
        return y[:, self._lead : self._lead + self.length] if y.shape[1] != self.length else y

    def rows(self, table: torch.Tensor) -> torch.Tensor:
        """The per-frame rows ``[B, F, 1, D]`` of the frames this slice touches, ``[B, n, 1, D]``.

        Padding tokens past the last frame take its row: their values are never attended to or returned.
        """
        first, stop = self._frame_range
        if stop > self.frames:
            table = torch.cat([table, table[:, -1:].expand(-1, stop - self.frames, -1, -1)], dim=1)
        return table[:, first:stop]


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, span: TokenSpan) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with ``x`` as ``[B, tokens, D]`` and scale/shift ``[B, F, 1, D]``."""
    return span.tokens(span.by_frame(x) * (1 + span.rows(scale)) + span.rows(shift))


def _gated(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, span: TokenSpan) -> torch.Tensor:
    """``x + y * gate`` with the gate broadcast per frame."""
    return span.tokens(span.by_frame(x) + span.by_frame(y) * span.rows(gate))


class PusaTransformerBlock(WanTransformerBlock):
    """A Wan block whose modulation ``temb`` is ``[B, F, 6, D]``: one row of six per latent frame."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        span: TokenSpan | None = None,
    ) -> torch.Tensor:
        if temb.ndim != 4:
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        if span is None:
            span = TokenSpan.whole(temb.shape[1], hidden_states.shape[1] // temb.shape[1])
        mod = (self.scale_shift_table.unsqueeze(0) + temb.float()).unsqueeze(2)  # [B, F, 1, 6, D]
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = mod.unbind(3)

        x = hidden_states
        normed = _modulate(self.norm1(x.float()), scale_msa, shift_msa, span).type_as(x)
        attn = self.attn1(normed, None, span.key_mask, rotary_emb)
        x = _gated(x.float(), attn, gate_msa, span).type_as(x)

        normed = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(normed, encoder_hidden_states, None, None)

        normed = _modulate(self.norm3(x.float()), c_scale, c_shift, span).type_as(x)
        ff = self.ffn(normed)
        return _gated(x.float(), ff.float(), c_gate, span).type_as(x)


class TokenSequence(torch.nn.Module):
    """Where context parallelism splits the tokens: the plan splits this module's four outputs.

    Pads tokens and rotary tables at the end to a multiple of ``multiple`` (the context-parallel
    degree, 1 without it) and returns each token's position, so every rank learns which tokens it
    got from diffusers' own split. No parameters.
    """

    def forward(
        self, hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor, multiple: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pad = -hidden_states.shape[1] % multiple
        if pad:
            hidden_states = F.pad(hidden_states, (0, 0, 0, pad))
            freqs_cos, freqs_sin = (F.pad(f, (0, 0, 0, 0, 0, pad)) for f in (freqs_cos, freqs_sin))
        # On the CPU, so reading a rank's first position back needs no device sync.
        positions = torch.arange(hidden_states.shape[1]).unsqueeze(0)
        return hidden_states, freqs_cos, freqs_sin, positions


class PusaTransformer3DModel(WanTransformer3DModel):
    """``WanTransformer3DModel`` that takes ``timestep`` as ``[B]`` (plain Wan) or ``[B, F]`` (Pusa)."""

    _no_split_modules = ["PusaTransformerBlock"]
    _repeated_blocks = ["PusaTransformerBlock"]
    # Wan's plan splits the rotary tables and the first block's input, and splits a 2-D timestep as
    # one timestep per token. Here the [B, F] timestep stays whole and one module splits tokens,
    # rotary tables and positions together (after padding them to a multiple of the degree).
    _cp_plan = {
        "token_sequence": {
            0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            2: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            3: ContextParallelInput(split_dim=1, expected_dims=2, split_output=True),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    # wraps() makes inspect.signature report Wan's config arguments, which ConfigMixin reads to
    # build the model from a config; a bare *args/**kwargs would silently drop them all.
    @functools.wraps(WanTransformer3DModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The block adds no parameters, so retyping keeps every weight and avoids building the
        # 40 blocks of the 14B twice.
        for block in self.blocks:
            block.__class__ = PusaTransformerBlock
        self.token_sequence = TokenSequence()

    def _resolve_parallel_config(self, config: ParallelConfig | ContextParallelConfig) -> ParallelConfig:
        """diffusers' setup, made to work on a machine without an accelerator.

        diffusers 0.42.1 picks each rank's device as ``rank % torch.accelerator.device_count()``
        (``models/modeling_utils.py:1719``), which divides by zero when there is no accelerator, before
        it would look at a mesh passed in the config. Every rank's device is then the CPU, and the
        mesh is built on the CPU unless the config brings one.
        """
        if torch.accelerator.device_count() > 0:
            return super()._resolve_parallel_config(config)
        if not torch.distributed.is_initialized():
            raise RuntimeError("torch.distributed must be initialized before enabling context parallelism")
        if isinstance(config, ContextParallelConfig):
            config = ParallelConfig(context_parallel_config=config)
        cp = config.context_parallel_config
        if cp is None:
            raise ValueError("without an accelerator only context parallelism is supported (ContextParallelConfig)")
        mesh = cp.mesh or torch.distributed.device_mesh.init_device_mesh(
            "cpu", cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names
        )
        config.setup(torch.distributed.get_rank(), torch.distributed.get_world_size(), torch.device("cpu"), mesh=mesh)
        self._parallel_config = config
        return config

    def _sequence_degree(self) -> int:
        """How many ranks share the token sequence: 1 without context parallelism."""
        cp = self._parallel_config.context_parallel_config if self._parallel_config is not None else None
        return 1 if cp is None else cp.ring_degree * cp.ulysses_degree

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """Predict the flow velocity for latents ``[B, C, F, H, W]``.

        ``timestep`` is ``[B]`` (every frame at the same time) or ``[B, F']`` with ``F'`` the number
        of latent frames after temporal patching: frame f is denoised as if at time ``timestep[:, f]``.
        """
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        post_f, post_h, post_w = frames // p_t, height // p_h, width // p_w

        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(batch, post_f)
        if timestep.shape != (batch, post_f):
            raise ValueError(
                f"timestep must be [batch] or [batch, latent frames] = [{batch}, {post_f}], "
                f"got {list(timestep.shape)}"
            )

        freqs_cos, freqs_sin = self.rope(hidden_states)
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()
        tokens, degree = hidden_states.shape[1], self._sequence_degree()
        hidden_states, freqs_cos, freqs_sin, positions = self.token_sequence(
            hidden_states, freqs_cos, freqs_sin, degree
        )
        rotary_emb = (freqs_cos, freqs_sin)
        # Every rank passes a mask when the sequence was padded, since diffusers gathers it across ranks.
        key_mask = (positions < tokens).to(hidden_states.device) if tokens % degree else None
        span = TokenSpan(int(positions[0, 0]), positions.shape[1], post_h * post_w, post_f, key_mask)

        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            timestep.flatten(), encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=post_f
        )
        timestep_proj = timestep_proj.unflatten(2, (6, -1))  # [B, F, 6, D]
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, span
                )
            else:
                hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, span)

        # The output head is modulated per frame too: [B, F, 1, D] shift and scale.
        table = self.scale_shift_table.to(temb.device).unsqueeze(0)  # [1, 1, 2, D]
        shift, scale = (table + temb.unsqueeze(2)).unsqueeze(2).unbind(3)
        shift, scale = shift.to(hidden_states.device), scale.to(hidden_states.device)
        hidden_states = _modulate(self.norm_out(hidden_states.float()), scale, shift, span).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)[:, :tokens]  # gathered whole under context parallelism

        hidden_states = hidden_states.reshape(batch, post_f, post_h, post_w, p_t, p_h, p_w, -1)
        output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
