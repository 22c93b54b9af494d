"""unCLIP's diffusion prior (DALL·E 2, Ramesh et al. 2022, Sec. 2.2): a transformer that denoises an image
embedding given a caption, predicting the clean embedding directly (x0 prediction, as the paper does).

| symbol | code          | meaning                                                                       |
| ------ | ------------- | ----------------------------------------------------------------------------- |
| z_t    | `x`           | the noised image embedding `[B, E, 1, 1]` (a 1x1 "image", so `ddpm.sample`     |
|        |               | samples it unchanged)                                                         |
| t      | `t`           | timesteps `[B]`                                                               |
| h      | `text_tokens` | the frozen text encoder's token states `[B, L, W_text]`                        |
| m      | `text_mask`   | `[B, L]` bool, True at real tokens (all False: the caption dropped, for CFG)   |
| z_y    | `text_embed`  | the caption's (scaled) embedding `[B, E]`                                      |
| q      | `query`       | a learned token; the output is read at its position                            |

The sequence is [h_1 … h_L, z_y, emb(t), z_t, q], each projected to `width`, plus learned positions,
through pre-LN encoder layers (`nn.clip_layers`); padding and dropped text tokens are masked out as keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config.base import DictConfig
from ..nn.clip_layers import CLIPEncoderLayer
from ..nn.embeddings import timestep_embedding

__all__ = ["PriorConfig", "DiffusionPrior"]


@dataclass
class PriorConfig(DictConfig):
    """The prior's sizes: `embed_dim` (E) and the text encoder's `text_width` / `context_length` come from
    the contrastive model it is trained on."""

    embed_dim: int
    text_width: int
    context_length: int
    width: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for key in ("embed_dim", "text_width", "context_length", "width", "layers", "heads", "mlp_ratio"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PriorConfig.{key} must be a positive integer; got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"PriorConfig.heads ({self.heads}) must divide width ({self.width})")


class DiffusionPrior(nn.Module):
    """`prior(x [B, E, 1, 1], t [B], *, text_tokens, text_mask, text_embed) -> x0-hat [B, E, 1, 1]`."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = PriorConfig.from_dict(config)
        self.config = c = config
        w = c.width
        self.token_proj = nn.Linear(c.text_width, w)
        self.text_embed_proj = nn.Linear(c.embed_dim, w)
        self.x_proj = nn.Linear(c.embed_dim, w)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.query = nn.Parameter(torch.randn(w) * w**-0.5)
        self.positions = nn.Parameter(torch.randn(c.context_length + 4, w) * 0.01)
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(w, c.heads, c.mlp_ratio * w, act="gelu", eps=1e-5, causal=False)
            for _ in range(c.layers)
        )
        self.final_norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, c.embed_dim)

    def forward(
        self, x: Tensor, t: Tensor | float | int, *, text_tokens: Tensor, text_mask: Tensor,
        text_embed: Tensor,
    ) -> Tensor:
        c = self.config
        b = x.shape[0]
        if x.shape[1:] != (c.embed_dim, 1, 1):
            raise ValueError(f"the prior denoises image embeddings [B, {c.embed_dim}, 1, 1]; got "
                             f"{tuple(x.shape)}")
        lc = c.context_length
        if text_tokens.shape != (b, lc, c.text_width) or text_mask.shape != (b, lc):
            raise ValueError(f"text_tokens must be [B={b}, {c.context_length}, {c.text_width}] and text_mask "
                             f"[B, {lc}]; got {tuple(text_tokens.shape)}, {tuple(text_mask.shape)}")
        t = torch.as_tensor(t, device=x.device).float().expand(b) if not torch.is_tensor(t) or t.ndim == 0 \
            else t.float()
        dtype = self.x_proj.weight.dtype
        t_emb = self.time_embed(timestep_embedding(t, c.width).to(dtype))
        seq = torch.cat([
            self.token_proj(text_tokens.to(dtype)),
            self.text_embed_proj(text_embed.to(dtype))[:, None],
            t_emb[:, None],
            self.x_proj(x.flatten(1).to(dtype))[:, None],
            self.query.to(dtype).expand(b, 1, -1),
        ], dim=1) + self.positions.to(dtype)
        keys = torch.cat([text_mask.bool(), torch.ones(b, 4, dtype=torch.bool, device=x.device)], dim=1)
        mask = keys[:, None, None, :].expand(b, 1, seq.shape[1], seq.shape[1])
        for layer in self.layers:
            seq = layer(seq, mask)
        return self.out(self.final_norm(seq[:, -1])).view(b, c.embed_dim, 1, 1).to(x.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
