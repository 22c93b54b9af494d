"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2): multistep, second order, data prediction.

Notation (VP process, Lu et al. 2022, Sec. 2):

| symbol        | code              | meaning                                                    |
| ------------- | ----------------- | ---------------------------------------------------------- |
| alpha, sigma  | `alpha`, `sig_vp` | sqrt(ab) and sqrt(1 - ab) at a grid point                  |
| lambda        | `lam`             | log(alpha / sigma) = -log(sigma_VE), half the log-SNR       |
| h             | `h`               | lambda' - lambda, the step in lambda                        |
| D             | `d.x0`            | the denoiser's x0_hat                                      |

    x' = (sigma'/sigma) x - alpha' (e^{-h} - 1) D_hat
    D_hat = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},  r = h_{i-1} / h

The first step and a step into sigma = 0 (or, with final_sigma='sigma_min', the last step of a run of
fewer than 15) are first order (D_hat = D_i): diffusers' `lower_order_final` behaviour, which keeps few-step
runs stable; k-diffusion's `sample_dpmpp_2m` does the same for sigma = 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .denoiser import Denoise, NoiseFn, step_range
from .grid import Grid

__all__ = ["dpmpp_2m"]


def dpmpp_2m(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, midpoint form) from the VP sample x `[B, C, …]`."""
    sig = grid.sigmas.tolist()
    n = grid.num_steps
    alpha = [1 / math.sqrt(1 + s * s) for s in sig]
    sig_vp = [s * a for s, a in zip(sig, alpha)]
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    d_prev, h_prev = None, 0.0
    for i in step_range(n, progress):
        d = denoise(x, i)
        h = lam[i + 1] - lam[i]
        ratio = sig_vp[i + 1] / sig_vp[i]
        phi = -alpha[i + 1] * math.expm1(-h)  # alpha' (1 - e^{-h})
        first_order = d_prev is None or (i == n - 1 and (sig[n] == 0 or n < 15))
        if first_order:
            x = d.mix(x_t=ratio, x0=phi)
        else:
            r = h_prev / h  # x' = ratio x + phi ((1 + 1/(2r)) D_i - 1/(2r) D_{i-1})
            x = torch.add(d.mix(x_t=ratio, x0=phi * (1 + 0.5 / r)), d_prev, alpha=-phi * 0.5 / r)
        d_prev, h_prev = d.x0, h
    return x
