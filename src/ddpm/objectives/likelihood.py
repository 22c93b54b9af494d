"""Gaussian log-likelihood pieces of the variational bound: the KL between diagonal Gaussians and the
discretised Gaussian decoder of 8-bit data (Ho et al. 2020, "DDPM", Sec. 3.3).

| symbol      | code                 | meaning                                                           |
| ----------- | -------------------- | ----------------------------------------------------------------- |
| mu, log s^2 | `mean`, `logvar`     | mean and log-variance of a diagonal Gaussian (any broadcast shape) |
| log s       | `log_scale`          | log standard deviation, 0.5 log s^2                               |
| Phi         | `log_ndtr`           | standard normal CDF, used in log space (`torch.special.log_ndtr`)  |
| delta       | `1 / (levels - 1)`   | half a bin: 8-bit data in [-1, 1] sit 2/255 apart                  |

Everything is elementwise and keeps the dtype it is given: the training loss calls it in float32, the
bits/dim evaluation in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["normal_kl", "discretized_gaussian_log_likelihood"]

_LN2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element in nats (closed form, broadcasting)."""
    d = logvar1 - logvar2
    # 0.5 (e^d - 1 - d + (mean1 - mean2)^2 / var2); expm1 keeps the first part accurate and >= 0 near d = 0.
    return 0.5 * (torch.expm1(d) - d + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(
    x: Tensor, *, mean: Tensor, log_scale: Tensor, levels: int = 256
) -> Tensor:
    """log P(x) per element: N(mean, e^(2 log_scale)) integrated over the bin of x in [-1, 1] (DDPM Eq. 13).

    Bins are 2/(levels-1) wide and the end bins are open to -inf and +inf. The exact log normal CDF is used
    and each bin is a difference of lower tails, so far-tail bins keep their precision instead of being
    clamped; bins narrow against the scale use the midpoint rule.
    """
    if int(levels) != levels or levels < 2:
        raise ValueError(f"levels must be an integer >= 2 (256 for 8-bit data), got {levels!r}")
    half = 1.0 / (levels - 1)
    inv_scale = torch.exp(-log_scale)
    c = (x - mean) * inv_scale  # standardised bin centre and half-width
    h = half * inv_scale
    log_first = torch.special.log_ndtr(c + h)  # x = -1: P(X <= -1 + delta)
    log_last = torch.special.log_ndtr(h - c)  # x = +1: P(X >= 1 - delta)
    log_mid = _log_normal_mass(c, h)
    return torch.where(x < -1 + half, log_first, torch.where(x > 1 - half, log_last, log_mid))


def _log_normal_mass(c: Tensor, h: Tensor) -> Tensor:
    """log(Phi(c + h) - Phi(c - h)) for h > 0, stable in both tails and for narrow intervals."""
    # The mass is even in c; on the lower side log_ndtr keeps its full relative precision.
    c = -c.abs()
    # Midpoint rule with its curvature term: mass = 2h phi(c) (1 + (c^2 - 1) h^2 / 6 + O(h^4 (1 + c^4))), so
    # the relative error is below 1e-9 where h (1 + |c|) < 1e-2, just where a difference of logs loses digits.
    narrow = h * (1 - c) < 1e-2
    c_n = torch.where(narrow, c, torch.zeros_like(c))
    h_n = torch.where(narrow, h, torch.full_like(h, 1e-3))
    log_narrow = -0.5 * c_n**2 - _LOG_SQRT_2PI + torch.log(2 * h_n) + torch.log1p((c_n**2 - 1) * h_n**2 / 6)
    log_b = torch.special.log_ndtr(c + h)
    z = torch.special.log_ndtr(c - h) - log_b  # log(Phi(c - h) / Phi(c + h)) < 0
    # Keep the branch torch.where drops finite, so that no NaN gradient leaks through it.
    z = torch.where(narrow, torch.full_like(z, -1.0), z).clamp(max=-torch.finfo(z.dtype).tiny)
    log_wide = log_b + _log1mexp(z)
    return torch.where(narrow, log_narrow, log_wide)


def _log1mexp(z: Tensor) -> Tensor:
    """log(1 - e^z) for z < 0, switching form at z = -ln 2 to stay accurate (Maechler 2012)."""
    return torch.where(z > -_LN2, torch.log(-torch.expm1(z)), torch.log1p(-torch.exp(z)))
