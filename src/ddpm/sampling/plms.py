"""PLMS, the pseudo linear multistep sampler of the original Stable Diffusion scripts (Liu et al. 2022).

Notation: ab, ab' are alpha_bar at grid points i and i + 1; e_i is the eps_hat of the denoiser at x_i.

    x' = phi(x, e, i) = sqrt(ab'/ab) x - (ab' - ab) / (ab sqrt(1 - ab') + sqrt(ab ab' (1 - ab))) e   (Eq. 9)

phi is the DDIM (eta = 0) step written without cancellation. The eps fed to phi is an Adams-Bashforth
combination of the current and up to three earlier e's (Eq. 12, the "pseudo linear multistep" method);
the first step, which has no history, averages e_0 and the eps at the Euler-predicted point x' (two model
calls), exactly as CompVis' PLMSSampler and diffusers' PNDMScheduler(skip_prk_steps=True) do. n steps
therefore take n + 1 model calls. Only the eps at grid points enters the history.
"""

from __future__ import annotations

import math

from torch import Tensor

from .denoiser import Denoise, NoiseFn, lin, step_range
from .grid import Grid

__all__ = ["plms"]


def plms(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """PNDM's PLMS (Liu et al. 2022, Eq. 9 + 12) from the VP sample x `[B, C, …]` at grid point 0."""
    ab = grid.alpha_bars.tolist()
    n = grid.num_steps
    if min(ab[:n]) <= 0:
        raise ValueError(
            "plms needs alpha_bar > 0 at every grid point (not a zero-terminal-SNR start); use ddim"
        )
    coef = []
    for i in range(n):
        a, p = ab[i], ab[i + 1]
        coef.append((math.sqrt(p / a), -(p - a) / (a * math.sqrt(1 - p) + math.sqrt(a * p * (1 - a)))))

    history: list[Tensor] = []
    for i in step_range(n, progress):
        e = denoise(x, i).eps
        if not history:
            if n > 1:
                x_euler = lin(coef[i][0], x, coef[i][1], e)
                e_prime = (e + denoise(x_euler, i + 1).eps) / 2
            else:
                e_prime = e
        elif len(history) == 1:
            e_prime = (3 * e - history[-1]) / 2
        elif len(history) == 2:
            e_prime = (23 * e - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_prime = (55 * e - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = history[-2:] + [e]
        x = lin(coef[i][0], x, coef[i][1], e_prime)
    return x
