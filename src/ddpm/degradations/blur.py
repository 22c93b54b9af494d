"""Cumulative Gaussian blur (Bansal et al. 2022, Sec. 4.1, deblurring; Sec. 5.1, generation).

Notation:

| symbol   | code              | meaning                                                                    |
| -------- | ----------------- | -------------------------------------------------------------------------- |
| G_k      | `kernel(k)`       | the level-k Gaussian kernel, `kernel_size` taps, standard deviation sigma_k |
| sigma_k  | `sigmas[k - 1]`   | `sigma` at every level (constant) or sigma * growth^(k-1) (exponential)    |
| D(x0, t) | `__call__`        | G_t * … * G_1 * x0, each blur with reflect padding                          |

A 2D Gaussian kernel is the outer product of two 1D ones, and padding by reflection is separable too, so
one blur of an n-pixel side is an n x n matrix B_k (the blur of each basis image), and t blurs in a row
are the product M_t = B_t … B_1. D(x0, t) = M_t x0 M_t^T (per side): the paper's t successive blurs,
evaluated as two matrix products whatever t is, exact and differentiable. The rows of every M_t sum to
1, so a constant image is left unchanged; after many levels M_t approaches a rank-1 averaging matrix and
the image its (weighted) channel means, which is where generation starts (`ddpm.degradations.start`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Degradation

__all__ = ["Blur", "BLUR_SCHEDULES"]

BLUR_SCHEDULES = ("constant", "exponential")


class Blur(Degradation):
    """D(x0, t): t successive Gaussian blurs of x0 `[B, C, H, W]`, level k with standard deviation sigma_k.

    levels: T; sigma: sigma_1 in pixels; schedule: `constant` (sigma_k = sigma) or `exponential`
    (sigma_k = sigma * growth^(k-1)); kernel_size: taps of each kernel (odd; the paper's 11 x 11 by
    default), reflect padding (each image side must exceed kernel_size // 2). With the defaults
    (sigma 0.5 growing to 7.7 px over 20 levels) a 16 px digit keeps about 2% of its spatial variation at
    T; 32 px images keep about 15% (levels=40, schedule="constant", sigma=7 brings them to 3%).
    """

    name = "blur"

    def __init__(
        self,
        *,
        levels: int = 20,
        sigma: float = 0.5,
        schedule: str = "exponential",
        growth: float = 1.2,
        kernel_size: int = 11,
    ) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"Blur levels must be an int >= 1, got {levels!r}")
        if schedule not in BLUR_SCHEDULES:
            raise ValueError(f"unknown blur schedule {schedule!r}; choose one of {list(BLUR_SCHEDULES)}")
        if not sigma > 0 or not growth > 0:
            raise ValueError(f"Blur sigma and growth must be positive, got sigma={sigma}, growth={growth}")
        if isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"Blur kernel_size must be odd and >= 1, got {kernel_size}")
        self.levels, self.sigma, self.schedule = levels, float(sigma), schedule
        self.growth, self.kernel_size = float(growth), int(kernel_size)
        rate = self.growth if schedule == "exponential" else 1.0
        self.sigmas = [self.sigma * rate**k for k in range(levels)]
        self._cache: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def options(self) -> dict[str, Any]:
        return {"levels": self.levels, "sigma": self.sigma, "schedule": self.schedule,
                "growth": self.growth, "kernel_size": self.kernel_size}  # fmt: skip

    def kernel(self, k: int) -> Tensor:
        """G_k: the normalised 1D Gaussian of level k (1 … T), float64 `[kernel_size]`."""
        half = self.kernel_size // 2
        x = torch.arange(-half, half + 1, dtype=torch.float64)
        g = torch.exp(-(x**2) / (2 * self.sigmas[k - 1] ** 2))
        return g / g.sum()

    def matrices(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """M_0 … M_T for an n-pixel side, `[T + 1, n, n]`: M_0 = I, M_t = B_t M_(t-1)."""
        key = (n, device, dtype)
        if key not in self._cache:
            half = self.kernel_size // 2
            if n <= half:
                raise ValueError(
                    f"Blur with kernel_size={self.kernel_size} pads by reflection, which needs an image "
                    f"side > {half}; got {n} pixels (use a smaller kernel_size)"
                )
            # row j of `eye` is the basis signal e_j; its padded blur is column j of B_k
            padded = F.pad(torch.eye(n, dtype=torch.float64)[:, None], (half, half), mode="reflect")
            mats = [torch.eye(n, dtype=torch.float64)]
            for k in range(1, self.levels + 1):
                blur = F.conv1d(padded, self.kernel(k).view(1, 1, -1))[:, 0].T
                mats.append(blur @ mats[-1])
            self._cache[key] = torch.stack(mats).to(device=device, dtype=dtype)
        return self._cache[key]

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        rows = self.matrices(x0.shape[-2], x0.device, x0.dtype)[t]  # [B, H, H]
        cols = self.matrices(x0.shape[-1], x0.device, x0.dtype)[t]  # [B, W, W]
        return torch.einsum("bij,bcjk,blk->bcil", rows, x0, cols)

    def total_sigma(self, t: int) -> float:
        """sqrt(sigma_1^2 + … + sigma_t^2): the width of the t blurs without padding or truncation."""
        return math.sqrt(sum(s * s for s in self.sigmas[:t]))
