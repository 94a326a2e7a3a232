"""The per-frame transformer: golden parity, equivalence with plain Wan and with diffusers' per-token path."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from pusa_core.loading import transformer_from_original_state_dict
from pusa_core.tiny_models import tiny_transformer
from pusa_core.transformer import PusaTransformer3DModel, PusaTransformerBlock

TOL = 1e-4


def _dit(tensors):
    return {k[4:]: v for k, v in tensors.items() if k.startswith("dit.")}


@pytest.fixture(scope="module")
def golden_model(pusa_golden, golden_config):
    return transformer_from_original_state_dict(_dit(pusa_golden[1]), golden_config, torch.float32)


def test_forward_matches_reference(golden_model, pusa_golden):
    t = pusa_golden[1]
    with torch.no_grad():
        out = golden_model(t["forward.x"], t["forward.timestep"], t["context.positive"]).sample
        uniform = golden_model(t["forward.x"], torch.tensor([700.0]), t["context.positive"]).sample
    assert (out - t["forward.out_base"]).abs().max() < TOL
    assert (uniform - t["forward.out_uniform_700"]).abs().max() < TOL


def test_all_equal_vector_equals_plain_wan(golden_model, pusa_golden, golden_config):
    """A [B, F] timestep with equal entries is exactly the scalar-timestep Wan model."""
    t = pusa_golden[1]
    plain = WanTransformer3DModel(**golden_config).eval()
    plain.load_state_dict(convert_wan_transformer_to_diffusers(_dit(t)))
    x, ctx = t["forward.x"], t["context.positive"]
    frames = x.shape[2]
    with torch.no_grad():
        ours = golden_model(x, torch.full((1, frames), 333.0), ctx).sample
        ref = plain(x, torch.tensor([333.0]), ctx).sample
    assert (ours - ref).abs().max() < 1e-5


def test_per_frame_equals_diffusers_per_token_path(golden_model, pusa_golden, golden_config):
    """diffusers' own 2-D timestep path (one timestep per token) gives the same output, at far more memory."""
    t = pusa_golden[1]
    plain = WanTransformer3DModel(**golden_config).eval()
    plain.load_state_dict(convert_wan_transformer_to_diffusers(_dit(t)))
    x, ts, ctx = t["forward.x"], t["forward.timestep"], t["context.positive"]
    tokens_per_frame = (x.shape[3] // 2) * (x.shape[4] // 2)
    per_token = ts.repeat_interleave(tokens_per_frame, dim=1)
    with torch.no_grad():
        ours = golden_model(x, ts, ctx).sample
        ref = plain(x, per_token, ctx).sample
    assert (ours - ref).abs().max() < 1e-5


def test_frames_are_modulated_independently():
    """Changing one frame's timestep changes the model's view of that frame's tokens first of all."""
    model = tiny_transformer(seed=3)
    x = torch.randn(1, 16, 3, 4, 4)
    ctx = torch.randn(1, 6, 32)
    with torch.no_grad():
        a = model(x, torch.tensor([[500.0, 500.0, 500.0]]), ctx).sample
        b = model(x, torch.tensor([[500.0, 500.0, 10.0]]), ctx).sample
    delta = (a - b).abs().amax(dim=(0, 1, 3, 4))
    assert delta[2] > 10 * delta[:2].max()


def test_batch_rows_use_their_own_timesteps():
    model = tiny_transformer(seed=4)
    x = torch.randn(1, 16, 3, 4, 4).repeat(2, 1, 1, 1, 1)
    ctx = torch.randn(1, 6, 32).repeat(2, 1, 1)
    ts = torch.tensor([[900.0, 100.0, 0.0], [0.0, 500.0, 1000.0]])
    with torch.no_grad():
        both = model(x, ts, ctx).sample
        first = model(x[:1], ts[:1], ctx[:1]).sample
        second = model(x[1:], ts[1:], ctx[1:]).sample
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-5)


def test_wrong_timestep_shape_is_a_clear_error():
    model = tiny_transformer()
    with pytest.raises(ValueError, match=r"timestep must be \[batch\] or \[batch, latent frames\] = \[1, 3\]"):
        model(torch.randn(1, 16, 3, 4, 4), torch.zeros(1, 5), torch.randn(1, 6, 32))


def test_config_round_trip_keeps_every_argument(tmp_path):
    """from_config/from_pretrained must see Wan's arguments (a bare **kwargs would silently drop them)."""
    model = tiny_transformer(seed=5)
    model.save_pretrained(tmp_path)
    loaded = PusaTransformer3DModel.from_pretrained(tmp_path)
    assert loaded.config.num_layers == 2 and loaded.config.attention_head_dim == 16
    assert all(isinstance(b, PusaTransformerBlock) for b in loaded.blocks)
    x, ctx = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 6, 32)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([[10.0, 900.0]]), ctx).sample, loaded(x, torch.tensor([[10.0, 900.0]]), ctx).sample)


def test_fp32_modules_stay_fp32_when_loading_bf16(pusa_golden, golden_config):
    model = transformer_from_original_state_dict(_dit(pusa_golden[1]), golden_config, torch.bfloat16)
    params = dict(model.named_parameters())
    assert params["blocks.0.scale_shift_table"].dtype == torch.float32
    assert params["condition_embedder.time_embedder.linear_1.weight"].dtype == torch.float32
    assert params["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
