"""Linear multistep (LMS) on the probability-flow ODE in sigma space (Karras et al. 2022, Eq. 3 with
s(t) = 1, sigma(t) = t), the Adams-Bashforth method on the non-uniform sigma grid; k-diffusion's
`sample_lms` and diffusers' LMSDiscreteScheduler (order 4).

Notation (as euler.py):

| symbol        | code       | meaning                                                                  |
| ------------- | ---------- | ------------------------------------------------------------------------ |
| x             | `x`        | VE sample x = x_t / sqrt(ab) at noise level sigma, `[B, C, …]`           |
| d_i           | `slopes`   | dx/dsigma = (x_i - D(x_i; sigma_i)) / sigma_i at grid point i           |
| l_j(s)        | —          | Lagrange basis polynomial on the nodes sigma_i, …, sigma_{i-k+1}         |

    x_{i+1} = x_i + sum_j c_j d_{i-j},   c_j = integral from sigma_i to sigma_{i+1} of l_j(s) ds,

with k = min(i + 1, order) nodes. The integrals of the (degree k - 1) polynomials are taken exactly;
diffusers integrates them numerically (scipy's quad, which is exact to round-off for these degrees).
"""

from __future__ import annotations

import math

from torch import Tensor

from .denoiser import Denoise, NoiseFn, step_range
from .grid import Grid

__all__ = ["lms", "lms_coefficients"]


def _poly_mul(p: list[float], q: list[float]) -> list[float]:
    out = [0.0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def _poly_integral(p: list[float], a: float, b: float) -> float:
    """Integral from a to b of sum_k p_k s^k."""
    return sum(c * (b ** (k + 1) - a ** (k + 1)) / (k + 1) for k, c in enumerate(p))


def lms_coefficients(nodes: list[float], a: float, b: float) -> list[float]:
    """c_j = integral from a to b of the Lagrange basis polynomial l_j on `nodes` (newest first)."""
    coef = []
    for j, s_j in enumerate(nodes):
        p = [1.0]
        for k, s_k in enumerate(nodes):
            if k != j:
                p = _poly_mul(p, [-s_k / (s_j - s_k), 1.0 / (s_j - s_k)])
        coef.append(_poly_integral(p, a, b))
    return coef


def lms(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
    order: int = 4,
) -> Tensor:
    """LMS of `order` (default 4, as diffusers) from the VE sample x `[B, C, …]` at grid point 0."""
    sig = grid.sigmas.tolist()
    c_in = [1 / math.sqrt(1 + s * s) for s in sig]
    slopes: list[Tensor] = []  # dx/dsigma at the latest grid points, newest last
    for i in step_range(grid.num_steps, progress):
        s = sig[i]
        d = denoise(x * c_in[i], i)
        slopes = [*slopes, d.mix(x_t=1 / (c_in[i] * s), x0=-1 / s)][-order:]  # (x - D) / sigma
        k = len(slopes)
        coef = lms_coefficients([sig[i - j] for j in range(k)], s, sig[i + 1])
        out = x.clone()
        for c, slope in zip(coef, reversed(slopes)):
            out.add_(slope, alpha=c)
        x = out
    return x
