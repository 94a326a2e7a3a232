"""The per-frame Wan transformer: Wan2.1 with one diffusion timestep per latent frame.

Pusa adds no parameters. Only the forward pass changes: the timestep is a vector ``[B, F]``, the
time embedding and 6-way modulation are computed once per frame (``[B, F, 6, D]``) and applied by
viewing the token sequence as ``[B, F, H'W', D]``. diffusers' own 2-D timestep path expands the
modulation to every token instead, which costs gigabytes per block on the 14B; this never does.
Parameter names are diffusers' own, so diffusers-format weights, peft LoRA, device maps, group
offloading and layerwise casting all apply unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from diffusers.utils import apply_lora_scale


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, frames: int) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with ``x`` as ``[B, F*T, D]`` and scale/shift ``[B, F, 1, D]``."""
    b, _, d = x.shape
    return (x.view(b, frames, -1, d) * (1 + scale) + shift).view(b, -1, d)


def _gated(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    """``x + y * gate`` with the gate broadcast per frame."""
    b, _, d = x.shape
    return (x.view(b, frames, -1, d) + y.view(b, frames, -1, d) * gate).view(b, -1, d)


class PusaTransformerBlock(WanTransformerBlock):
    """A Wan block whose modulation ``temb`` is ``[B, F, 6, D]``: one row of six per latent frame."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        if temb.ndim != 4:
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        frames = temb.shape[1]
        mod = (self.scale_shift_table.unsqueeze(0) + temb.float()).unsqueeze(2)  # [B, F, 1, 6, D]
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = mod.unbind(3)

        x = hidden_states
        normed = _modulate(self.norm1(x.float()), scale_msa, shift_msa, frames).type_as(x)
        attn = self.attn1(normed, None, None, rotary_emb)
        x = _gated(x.float(), attn, gate_msa, frames).type_as(x)

        normed = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(normed, encoder_hidden_states, None, None)

        normed = _modulate(self.norm3(x.float()), c_scale, c_shift, frames).type_as(x)
        ff = self.ffn(normed)
        return _gated(x.float(), ff.float(), c_gate, frames).type_as(x)


class PusaTransformer3DModel(WanTransformer3DModel):
    """``WanTransformer3DModel`` that takes ``timestep`` as ``[B]`` (plain Wan) or ``[B, F]`` (Pusa)."""

    _no_split_modules = ["PusaTransformerBlock"]
    _repeated_blocks = ["PusaTransformerBlock"]
    # Context parallelism splits tokens; per-frame modulation is indexed by frame, so it is not offered.
    _cp_plan = None

    # wraps() makes inspect.signature report Wan's config arguments, which ConfigMixin reads to
    # build the model from a config; a bare *args/**kwargs would silently drop them all.
    @functools.wraps(WanTransformer3DModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The block adds no parameters, so retyping keeps every weight and avoids building the
        # 40 blocks of the 14B twice.
        for block in self.blocks:
            block.__class__ = PusaTransformerBlock

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

        rotary_emb = self.rope(hidden_states)
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            timestep.flatten(), encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=post_f
        )
        timestep_proj = timestep_proj.unflatten(2, (6, -1))  # [B, F, 6, D]
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb
                )
            else:
                hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)

        # The output head is modulated per frame too: [B, F, 1, D] shift and scale.
        table = self.scale_shift_table.to(temb.device).unsqueeze(0)  # [1, 1, 2, D]
        shift, scale = (table + temb.unsqueeze(2)).unsqueeze(2).unbind(3)
        shift, scale = shift.to(hidden_states.device), scale.to(hidden_states.device)
        hidden_states = _modulate(self.norm_out(hidden_states.float()), scale, shift, post_f).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)

        hidden_states = hidden_states.reshape(batch, post_f, post_h, post_w, p_t, p_h, p_w, -1)
        output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
