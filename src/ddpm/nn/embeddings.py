"""Timestep embeddings: the sinusoidal position code of Vaswani et al. 2017 (§3.5) applied to diffusion time.

| symbol   | code              | meaning                                                            |
| -------- | ----------------- | ------------------------------------------------------------------ |
| t        | `t`               | timesteps `[B]` (int or float)                                     |
| d        | `dim`             | embedding width; d/2 frequencies                                   |
| w_i      | `freqs[i]`        | exp(-ln(max_period) * i / (d/2 - freq_shift)), i = 0 … d/2-1       |

DDPM (Ho et al. 2020, TF release) writes [sin, cos] with freq_shift=1; LDM / Stable Diffusion write
[cos, sin] with freq_shift=0. Both are one call here, computed in float32 exactly as the references do,
so released weights reproduce their outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["timestep_embedding"]


def timestep_embedding(
    t: Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> Tensor:
    """Sinusoidal embedding of timesteps `t [B]` -> `[B, dim]` float32 (Vaswani et al. 2017, §3.5)."""
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects timesteps of shape [B]; got {tuple(t.shape)}")
    half = dim // 2
    if half < 1 or half - freq_shift <= 0:
        raise ValueError(f"embedding dim {dim} is too small for freq_shift={freq_shift}; use dim >= 4")
    # The same operation order as the LDM and diffusers references: (-ln P * i) / (half - shift), in float32.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None, :]
    if flip_sin_to_cos:
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    else:
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
