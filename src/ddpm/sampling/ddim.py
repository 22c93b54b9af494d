"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), any eta.

Notation: ab, ab' are alpha_bar at the current and the next grid point; x0_hat, eps_hat come from the
denoiser; z ~ N(0, I).

    sigma = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab')            (Eq. 16)
    x' = sqrt(ab') x0_hat + sqrt(1 - ab' - sigma^2) eps_hat + sigma z    (Eq. 12)

eta = 0 is the deterministic DDIM; eta = 1 is ancestral DDPM sampling with the posterior variance.
The next level is the next grid point (for `leading` spacing the same as diffusers' t - T // steps).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .denoiser import Denoise, NoiseFn, step_range
from .grid import Grid

__all__ = ["ddim"]


def ddim(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    eta: float = 0.0,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12) from the VP sample x `[B, C, …]` at grid point 0 to the terminal."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
    ab = grid.alpha_bars.tolist()
    for i in step_range(grid.num_steps, progress):
        a, a_next = ab[i], ab[i + 1]
        sigma = eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next)) if eta > 0 else 0.0
        x = denoise(x, i).mix(x0=math.sqrt(a_next), eps=math.sqrt(max(1 - a_next - sigma**2, 0.0)))
        if sigma > 0:
            if noise is None:
                raise ValueError("ddim with eta > 0 needs a noise source")
            x = torch.add(x, noise(x), alpha=sigma)
    return x
