"""The LDM spatial transformer (Rombach et al. 2022, §3.3): self-attention, cross-attention to a context
(e.g. text tokens) and a GEGLU feed-forward over the pixels of a feature map.

| symbol   | code            | meaning                                                       |
| -------- | --------------- | ------------------------------------------------------------- |
| x        | `x`             | tokens `[B, L, D]`, L = H * W, D = heads * dim_head            |
| c        | `context`       | conditioning tokens `[B, S, context_dim]`                      |
| GEGLU    | `GEGLU`         | (x W + b) * GELU(x V + c) (Shazeer 2020, Eq. 5)                |

Parameter names follow the Stable Diffusion 1.x checkpoints (`proj_in`, `transformer_blocks.N.attn1`,
`ff.net.0.proj`, …) so their weights load by name.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CrossAttention
from .norm import GroupNorm32, zero_module

__all__ = ["GEGLU", "FeedForward", "BasicTransformerBlock", "SpatialTransformer"]


class GEGLU(nn.Module):
    """Gated GELU unit `[..., dim] -> [..., dim_out]` (Shazeer 2020, "GLU Variants", Eq. 5)."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """Position-wise feed-forward `[..., dim] -> [..., dim]` with a GEGLU input layer (LDM)."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block on tokens `[B, L, dim]`: self-attention, cross-attention to `context`, feed-forward.
    With `self_attention=False` the first attention attends `context` too (LDM's `disable_self_attn`)."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        self_attention: bool = True,
    ):
        super().__init__()
        if not self_attention and context_dim is None:
            raise ValueError("self_attention=False makes the first attention a cross-attention: "
                             "give context_dim")
        self.self_attention = self_attention
        self.attn1 = CrossAttention(dim, context_dim=None if self_attention else context_dim, heads=heads,
                                    dim_head=dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(
            dim, context_dim=context_dim, heads=heads, dim_head=dim_head, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = x + self.attn1(self.norm1(x), None if self.self_attention else context)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Residual transformer over the pixels of `[B, C, H, W]` conditioned on `context [B, S, context_dim]`
    (LDM §3.3). `use_linear_projection` selects Linear (SD 2) instead of 1x1 conv (SD 1) for proj_in/out;
    `self_attention=False` makes every block's first attention a second cross-attention."""

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        dim_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        dropout: float = 0.0,
        norm_groups: int = 32,
        use_linear_projection: bool = False,
        self_attention: bool = True,
    ):
        super().__init__()
        inner = heads * dim_head
        self.use_linear_projection = use_linear_projection
        # The LDM reference normalises here with eps=1e-6 (its ResBlocks use 1e-5).
        self.norm = GroupNorm32(norm_groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in: nn.Module = nn.Linear(channels, inner)
        else:
            self.proj_in = nn.Conv2d(channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner, heads=heads, dim_head=dim_head, context_dim=context_dim, dropout=dropout,
                self_attention=self_attention,
            )
            for _ in range(depth)
        )
        if use_linear_projection:
            self.proj_out: nn.Module = zero_module(nn.Linear(inner, channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner, channels, kernel_size=1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)
        # [B, D, H, W] -> [B, L, D]: a free view for channels_last tensors.
        h = h.permute(0, 2, 3, 1).reshape(b, hgt * wid, -1)
        if self.use_linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h)
        h = h.view(b, hgt, wid, -1).permute(0, 3, 1, 2)  # channels_last view of [B, D, H, W]
        if not self.use_linear_projection:
            h = self.proj_out(h)
        return x + h
