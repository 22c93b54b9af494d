"""A small transformer text encoder trained from scratch together with the UNet.

Token and learned position embeddings, `layers` pre-LayerNorm transformer layers (Vaswani et al. 2017 with
the pre-norm arrangement of GPT-2) attending over the non-padding tokens, and a final LayerNorm. The per-token
states `[B, L, width]` feed the UNet's cross-attention as `context`, exactly where a frozen CLIP encoder's
states go in the Stable Diffusion layout.

Attention is bidirectional by default; `causal=True` lets each token see only itself and the tokens before
it, as in CLIP's text encoder (padding positions, after the prompt, then see all of it). Causality makes word
order a first-order feature: in "a red circle to the left of a blue square" only the words of the second
object have seen "left", so their states differ from the first object's by the relation, where a bidirectional
encoder gives both objects the same view of the sentence and only the position embeddings tell them apart.

| symbol | code             | meaning                                      |
| ------ | ---------------- | -------------------------------------------- |
| L      | `context_length` | tokens per prompt, `<bos>` and `<eos>` included |
| D      | `width`          | width of the token states (the UNet's context_dim) |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.base import DictConfig

__all__ = ["SmallTextConfig", "SmallTextEncoder"]


@dataclass
class SmallTextConfig(DictConfig):
    """Hyper-parameters of `SmallTextEncoder`; JSON-able through `to_dict` / `from_dict`."""

    vocab_size: int
    context_length: int = 16
    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "width", "layers", "heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SmallTextConfig.{name} must be a positive integer; got {value!r}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"SmallTextConfig.causal must be true or false; got {self.causal!r}")
        if self.width % self.heads:
            raise ValueError(
                f"SmallTextConfig.width ({self.width}) must be a multiple of heads ({self.heads})"
            )



class _Layer(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)); padding keys are masked out."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # [B, heads, L, d/heads]
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class SmallTextEncoder(nn.Module):
    """`encoder(input_ids [B, L], attention_mask [B, L] | None) -> token states [B, L, width]`."""

    def __init__(self, config: SmallTextConfig):
        super().__init__()
        self.config = config
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.position_embedding = nn.Parameter(torch.zeros(c.context_length, c.width))
        self.layers = nn.ModuleList(_Layer(c.width, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.final_norm = nn.LayerNorm(c.width)
        # Unit-variance word and position vectors (not GPT-2's 0.02 / 0.01), so that words the UNet cannot
        # use yet still start apart (docs/shapes-text-to-image.md, "Text embeddings", has the measurement).
        nn.init.normal_(self.token_embedding.weight, std=1.0)
        nn.init.normal_(self.position_embedding, std=1.0)

    @property
    def width(self) -> int:
        return self.config.width

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Token states `[B, L, width]` of `input_ids [B, L]` (mask: 1 for real tokens, 0 for padding)."""
        if input_ids.ndim != 2 or input_ids.shape[1] > self.config.context_length:
            raise ValueError(
                f"input_ids must be [B, L] with L <= {self.config.context_length}; "
                f"got {tuple(input_ids.shape)}"
            )
        n = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding[:n]
        key_mask = None
        if attention_mask is not None:
            key_mask = attention_mask.to(torch.bool)[:, None, None, :]  # [B, 1, 1, L], broadcast over queries
        if self.config.causal:  # query i sees keys j <= i (the first token, <bos>, is never padding)
            earlier = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            key_mask = earlier if key_mask is None else key_mask & earlier
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.final_norm(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
