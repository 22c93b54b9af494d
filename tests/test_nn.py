"""Building blocks against their defining equations and against the reference library's numerics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddpm.nn import (
    GEGLU,
    AttentionBlock,
    CrossAttention,
    Downsample,
    GroupNorm32,
    ResBlock,
    SpatialTransformer,
    Upsample,
    heads_for,
    timestep_embedding,
)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel() if p.ndim >= 2 else 10))
    return module


def naive_attention(q, k, v):
    """softmax(Q K^T / sqrt(d)) V on `[B, h, L, d]` (Vaswani et al. 2017, Eq. 1)."""
    w = torch.einsum("bhld,bhsd->bhls", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhls,bhsd->bhld", w.softmax(-1), v)


# -------------------------------------------------------------------------------- timestep embedding
@pytest.mark.parametrize("flip, shift", [(True, 0.0), (False, 1.0), (True, 1.0)])
def test_timestep_embedding_matches_diffusers_bitwise(flip, shift):
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 17, 500, 999])
    ours = timestep_embedding(t, 128, flip_sin_to_cos=flip, freq_shift=shift)
    ref = get_timestep_embedding(t, 128, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert torch.equal(ours, ref)


def test_timestep_embedding_formula():
    # DDPM TF release: [sin(t w_i), cos(t w_i)] with w_i = 10000^(-i/(half-1)).
    t = torch.tensor([3.0, 250.5])
    emb = timestep_embedding(t, 8, flip_sin_to_cos=False, freq_shift=1.0)
    w = torch.tensor([10000 ** (-i / 3) for i in range(4)], dtype=torch.float64)
    args = t.double()[:, None] * w
    torch.testing.assert_close(emb.double(), torch.cat([args.sin(), args.cos()], 1), atol=1e-4, rtol=0)
    odd = timestep_embedding(t, 9)
    assert odd.shape == (2, 9) and torch.all(odd[:, -1] == 0)
    with pytest.raises(ValueError, match=r"\[B\]"):
        timestep_embedding(torch.zeros(2, 1), 8)


# ------------------------------------------------------------------------------------- normalisation
def test_groupnorm32_takes_statistics_in_float32():
    gn = randomize(GroupNorm32(4, 16, eps=1e-5)).bfloat16()
    x = (100 + torch.randn(2, 16, 5, 5)).bfloat16()  # a large mean: low-precision statistics would be off
    out = gn(x)
    assert out.dtype == torch.bfloat16
    ref = F.group_norm(x.float(), 4, gn.weight.float(), gn.bias.float(), 1e-5)
    assert torch.equal(out, ref.bfloat16())


# ----------------------------------------------------------------------------------------- attention
def test_heads_for():
    assert heads_for(256, num_heads=4, num_head_channels=None) == (4, 64)
    assert heads_for(256, num_heads=1, num_head_channels=32) == (8, 32)
    with pytest.raises(ValueError, match="num_heads=3"):
        heads_for(256, num_heads=3, num_head_channels=None)


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_block_is_residual_softmax_attention(heads, channels_last):
    blk = randomize(AttentionBlock(16, heads=heads, norm_groups=4))
    x = torch.randn(2, 16, 3, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = blk(x)
    h = blk.norm(x).flatten(2).transpose(1, 2)  # [B, L, C]
    q, k, v = (h @ w.T + b for w, b in zip(blk.qkv.weight.chunk(3), blk.qkv.bias.chunk(3)))
    split = lambda z: z.view(2, 15, heads, 16 // heads).transpose(1, 2)  # noqa: E731
    a = naive_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(2, 15, 16)
    ref = x + blk.proj_out(a).transpose(1, 2).reshape(2, 16, 3, 5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_attention_block_starts_as_identity():
    x = torch.randn(1, 8, 4, 4)
    assert torch.equal(AttentionBlock(8, heads=2, norm_groups=4)(x), x)


def test_cross_attention_matches_the_equation():
    att = randomize(CrossAttention(12, context_dim=7, heads=3, dim_head=5))
    x, c = torch.randn(2, 9, 12), torch.randn(2, 4, 7)
    split = lambda z: z.view(2, -1, 3, 5).transpose(1, 2)  # noqa: E731
    a = naive_attention(split(att.to_q(x)), split(att.to_k(c)), split(att.to_v(c)))
    ref = att.to_out[0](a.transpose(1, 2).reshape(2, 9, 15))
    torch.testing.assert_close(att(x, c), ref, atol=1e-5, rtol=1e-5)
    # without context it attends over x itself
    self_att = CrossAttention(12, heads=3, dim_head=5)
    assert self_att(x).shape == (2, 9, 12)


def test_geglu():
    g = randomize(GEGLU(6, 4))
    x = torch.randn(3, 6)
    y = x @ g.proj.weight.T + g.proj.bias
    torch.testing.assert_close(g(x), y[:, :4] * F.gelu(y[:, 4:]))


def test_spatial_transformer_linear_and_conv_projections_agree():
    conv = randomize(SpatialTransformer(16, heads=2, dim_head=8, context_dim=6, norm_groups=4))
    lin = SpatialTransformer(
        16, heads=2, dim_head=8, context_dim=6, norm_groups=4, use_linear_projection=True
    )
    sd = {k: (v.flatten(1) if v.ndim == 4 else v) for k, v in conv.state_dict().items()}
    lin.load_state_dict(sd)
    x, c = torch.randn(2, 16, 4, 3), torch.randn(2, 5, 6)
    torch.testing.assert_close(lin(x, c), conv(x, c), atol=1e-5, rtol=1e-5)
    assert conv.norm.eps == 1e-6  # the LDM transformer's GroupNorm eps


# ------------------------------------------------------------------------------- residual / resample
def test_resample_shapes_and_errors():
    x = torch.randn(2, 8, 6, 4)
    assert Upsample(8, out_channels=4)(x).shape == (2, 4, 12, 8)
    assert Downsample(8, use_conv=False)(x).shape == (2, 8, 3, 2)
    torch.testing.assert_close(Downsample(8, use_conv=False)(x)[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    assert torch.equal(Upsample(8, use_conv=False)(x)[:, :, ::2, ::2], x)
    with pytest.raises(ValueError, match="without a conv"):
        Downsample(8, use_conv=False, out_channels=4)


def test_resblock_equation():
    blk = randomize(ResBlock(8, 12, out_channels=16, norm_groups=4))
    x, e = torch.randn(2, 8, 4, 4), torch.randn(2, 12)
    gn1, _, conv1 = blk.in_layers
    gn2, _, _, conv2 = blk.out_layers
    h = conv1(F.silu(gn1(x))) + blk.emb_layers[1](F.silu(e))[:, :, None, None]
    ref = blk.skip_connection(x) + conv2(F.silu(gn2(h)))
    torch.testing.assert_close(blk(x, e), ref)


def test_resblock_scale_shift_and_resampling():
    blk = randomize(ResBlock(8, 12, use_scale_shift_norm=True, down=True, norm_groups=4))
    x, e = torch.randn(2, 8, 4, 4), torch.randn(2, 12)
    scale, shift = blk.emb_layers[1](F.silu(e))[:, :, None, None].chunk(2, dim=1)
    gn1, _, conv1 = blk.in_layers
    gn2, _, _, conv2 = blk.out_layers
    h = conv1(F.avg_pool2d(F.silu(gn1(x)), 2))
    ref = F.avg_pool2d(x, 2) + conv2(F.silu(gn2(h) * (1 + scale) + shift))
    torch.testing.assert_close(blk(x, e), ref)
    up = ResBlock(8, 12, up=True, norm_groups=4)
    assert up(x, e).shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match="not both"):
        ResBlock(8, 12, up=True, down=True, norm_groups=4)
