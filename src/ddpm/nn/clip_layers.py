"""The pre-LN transformer layer of CLIP's towers (Radford et al. 2021, Sec. 2.4), shared by the text
transformer (causal) and the vision transformer (bidirectional over [CLS] + patches).

| symbol | code           | meaning                                                           |
| ------ | -------------- | ----------------------------------------------------------------- |
| x      | `x`            | tokens `[B, L, D]`, D = `width` = heads * d                       |
| mask   | `mask`         | boolean `[B, 1, L, L]` (True: may attend) or None                  |
| QGELU  | `quick_gelu`   | x * sigmoid(1.702 x), CLIP's GELU approximation                    |

Parameter names are the `transformers` names (`self_attn.{q,k,v,out}_proj`, `layer_norm1/2`,
`mlp.fc1/fc2`), so the released checkpoints load by name into either tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import merge_heads, split_heads

__all__ = ["CLIP_ACTIVATIONS", "CLIPAttention", "CLIPMLP", "CLIPEncoderLayer", "CLIPEncoder"]

CLIP_ACTIVATIONS = ("quick_gelu", "gelu")


class CLIPAttention(nn.Module):
    """Multi-head self-attention; `causal=True` lets token i see tokens j <= i when no mask is given."""

    def __init__(self, width: int, heads: int, *, causal: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(merge_heads(out))


class CLIPMLP(nn.Module):
    """fc2(act(fc1(x))) with act quick-GELU (CLIP's) or exact GELU."""

    def __init__(self, width: int, intermediate: int, *, act: str) -> None:
        super().__init__()
        if act not in CLIP_ACTIVATIONS:
            raise ValueError(f"act must be one of {CLIP_ACTIVATIONS}, got {act!r}")
        self.act = act
        self.fc1 = nn.Linear(width, intermediate)
        self.fc2 = nn.Linear(intermediate, width)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        # quick-GELU is CLIP's sigmoid approximation x * sigmoid(1.702 x) (Hendrycks & Gimpel 2016, Sec. 2).
        x = x * torch.sigmoid(1.702 * x) if self.act == "quick_gelu" else F.gelu(x)
        return self.fc2(x)


class CLIPEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, intermediate: int, *, act: str, eps: float,
                 causal: bool) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(width, heads, causal=causal)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = CLIPMLP(width, intermediate, act=act)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """`layers` CLIP encoder layers under `encoder.layers.N` (the transformers layout)."""

    def __init__(self, layers: int, width: int, heads: int, intermediate: int, *, act: str, eps: float,
                 causal: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(width, heads, intermediate, act=act, eps=eps, causal=causal)
            for _ in range(layers)
        )

    @torch.no_grad()
    def reset_parameters(self, *, attn_std: float, proj_std: float, fc_std: float) -> None:
        """CLIP's initialisation (its released `initialize_parameters`): N(0, s) weights, zero biases."""
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            for linear, std in ((a.q_proj, attn_std), (a.k_proj, attn_std), (a.v_proj, attn_std),
                                (a.out_proj, proj_std), (m.fc1, fc_std), (m.fc2, proj_std)):
                nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(linear.bias)
            for norm in (layer.layer_norm1, layer.layer_norm2):
                norm.reset_parameters()
