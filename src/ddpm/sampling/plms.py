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

    history: list[Tensor] = []  # eps at the previous grid points, newest last
    for i in step_range(n, progress):
        a, b = coef[i]  # x' = a x + b e'
        e = denoise(x, i).eps
        if not history and n > 1:  # e' = (e_0 + eps(x_euler)) / 2, x_euler = phi(x, e_0, 0)
            e_mid = denoise(lin(a, x, b, e), i + 1).eps
            terms = [(b / 2, e), (b / 2, e_mid)]
        else:
            weights = _ADAMS_BASHFORTH[len(history)]
            terms = [(b * w, eps) for w, eps in zip(weights, [e, *reversed(history)])]
        history = history[-2:] + [e]
        x = _combine(a, x, terms)
    return x


# e' = sum_k w_k e_{i-k} (Eq. 12), by the number of earlier eps available
_ADAMS_BASHFORTH = {
    0: (1.0,),
    1: (3 / 2, -1 / 2),
    2: (23 / 12, -16 / 12, 5 / 12),
    3: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _combine(a: float, x: Tensor, terms: list[tuple[float, Tensor]]) -> Tensor:
    """a x + sum_k c_k t_k, accumulated in place into one fresh tensor."""
    out = x * a
    for c, t in terms:
        out.add_(t, alpha=c)
    return out
