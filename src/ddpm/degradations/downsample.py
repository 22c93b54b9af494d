"""Super-resolution degradation (Bansal et al. 2022, Sec. 4.1): halve the resolution at every level.

D(x0, t) = up_t(down_t(x0)): down_t averages 2^t x 2^t blocks (area down-sampling), up_t repeats each
pixel 2^t x 2^t times (nearest up-sampling), so the image keeps its size and loses its detail. Averaging
2^t blocks is t halvings in a row, so the levels are cumulative.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Degradation

__all__ = ["Downsample"]


class Downsample(Degradation):
    """D(x0, t) for x0 `[B, C, H, W]`: area down by 2^t, nearest up by 2^t (H and W divisible by 2^T).

    levels: T (3 by default: 16 px -> 2 px, 32 px -> 4 px; generation starts from channel means, so it
    needs the last level to be one pixel, T = log2(side)).
    """

    name = "downsample"

    def __init__(self, *, levels: int = 3) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"Downsample levels must be an int >= 1, got {levels!r}")
        self.levels = levels

    def options(self) -> dict[str, Any]:
        return {"levels": self.levels}

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        f = 2**self.levels
        if x0.shape[-2] % f or x0.shape[-1] % f:
            raise ValueError(
                f"Downsample with {self.levels} levels halves the image {self.levels} times: its sides must "
                f"be divisible by {f}, got {x0.shape[-2]} x {x0.shape[-1]} (use fewer levels or resize)"
            )
        out = x0
        for level in range(1, self.levels + 1):
            k = 2**level
            low = F.avg_pool2d(x0, k)
            up = low.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
            out = torch.where((t == level).view(-1, 1, 1, 1), up, out)
        return out
