"""Attention layers, all through `F.scaled_dot_product_attention` (Vaswani et al. 2017, Eq. 1).

| symbol   | code        | meaning                                                          |
| -------- | ----------- | ---------------------------------------------------------------- |
| B, L, S  |             | batch, query length, key/value length                            |
| h, d     | `heads`, `d`| number of heads and channels per head; inner width = h * d       |
| Q, K, V  | `q, k, v`   | `[B, h, L, d]`, `[B, h, S, d]`; softmax(Q K^T / sqrt(d)) V        |

`AttentionBlock` is the pixel-space self-attention of DDPM / ADM; `CrossAttention` is the LDM layer
(Rombach et al. 2022) used inside transformer blocks, with the Stable Diffusion parameter names
(`to_q`, `to_k`, `to_v`, `to_out.0`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config.architectures import heads_for
from .norm import GroupNorm32, zero_module

__all__ = ["split_heads", "merge_heads", "heads_for", "AttentionBlock", "CrossAttention"]


def split_heads(x: Tensor, heads: int) -> Tensor:
    """`[B, L, h*d]` -> `[B, h, L, d]` (a view)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """`[B, h, L, d]` -> `[B, L, h*d]`."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over the pixels of `[B, C, H, W]` (DDPM Appendix B; ADM §3)."""

    def __init__(self, channels: int, *, heads: int = 1, norm_groups: int = 32, norm_eps: float = 1e-5):
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads={heads} must divide channels={channels}")
        self.heads = heads
        self.norm = GroupNorm32(norm_groups, channels, eps=norm_eps)
        # One projection for q, k and v, rows laid out [3, heads, d] (ADM's "new" attention order).
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        # [B, C, H, W] -> [B, L, C]; a free view when x is channels_last.
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        qkv = self.qkv(tokens).view(b, hgt * wid, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, h, L, d]
        out = self.proj_out(merge_heads(F.scaled_dot_product_attention(q, k, v)))
        # [B, L, C] -> [B, C, H, W] as a channels_last view, no copy.
        return x + out.transpose(1, 2).view(b, c, hgt, wid)


class CrossAttention(nn.Module):
    """Multi-head attention of queries `x [B, L, dim]` over `context [B, S, context_dim]` (self-attention when
    `context` is None), as in LDM's transformer blocks (Rombach et al. 2022, §3.3)."""

    def __init__(
        self,
        query_dim: int,
        *,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.heads)
        k = split_heads(self.to_k(context), self.heads)
        v = split_heads(self.to_v(context), self.heads)
        return self.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v)))
