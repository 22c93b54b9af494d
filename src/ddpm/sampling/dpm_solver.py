"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++"): multistep solvers in data prediction, 2M (Alg. 2), 3M, and
the 2M SDE variant (Sec. 5 / App. B: the SDE solver of the same order).

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
runs stable; k-diffusion's `sample_dpmpp_2m` does the same for sigma = 0. A step of h = 0 (a Karras or
exponential grid, which ends at sigma_min, with final_sigma='sigma_min') leaves x as it is, as the weights
of diffusers' update do in the limit.

3M (third order, Lu et al. 2022, App. A's multistep form, as DPMSolverMultistepScheduler(solver_order=3)):
with r0 = h_{i-1} / h, r1 = h_{i-2} / h and the divided differences

    D1_0 = (D_i - D_{i-1}) / r0,  D1_1 = (D_{i-1} - D_{i-2}) / r1
    D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1)
    x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) D_i + alpha' (phi_2) D1 - alpha' (phi_3) D2,
    phi_2 = (e^{-h} - 1) / h + 1,  phi_3 = (e^{-h} - 1 + h) / h^2 - 1/2.

Its second step and (in runs of fewer than 15) its second-to-last step are 2M steps, the first and last
first order.

2M SDE (diffusers' `sde-dpmsolver++`, k-diffusion's `sample_dpmpp_2m_sde` with eta = 1, midpoint):

    x' = (sigma'/sigma) e^{-h} x + alpha' (1 - e^{-2h}) D_hat + sigma' sqrt(1 - e^{-2h}) z,

D_hat as in 2M, z fresh standard-normal noise from the per-sample generators at every step into sigma' > 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .denoiser import Denoise, NoiseFn, step_range
from .grid import Grid

__all__ = ["dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde"]


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
        if h == 0:  # a grid ending at sigma_min twice (Karras/exponential + final_sigma): a null step
            continue
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


def _levels(grid: Grid) -> tuple[list[float], list[float], list[float], list[float]]:
    """VE sigma, alpha, VP sigma and lambda = -log sigma_VE at each grid point (lambda = inf at sigma = 0)."""
    sig = grid.sigmas.tolist()
    alpha = [1 / math.sqrt(1 + s * s) for s in sig]
    return sig, alpha, [s * a for s, a in zip(sig, alpha)], [-math.log(s) if s > 0 else math.inf for s in sig]


def _combine(x: Tensor, a: float, terms: list[tuple[float, Tensor]]) -> Tensor:
    """a x + sum_k c_k t_k in one fresh tensor."""
    out = x * a
    for c, t in terms:
        if c != 0.0:
            out.add_(t, alpha=c)
    return out


def dpmpp_3m(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022; DPMSolverMultistepScheduler, solver_order=3) from the VP sample x."""
    sig, alpha, sig_vp, lam = _levels(grid)
    n = grid.num_steps
    history: list[Tensor] = []  # x0_hat at the previous grid points, newest last
    for i in step_range(n, progress):
        d = denoise(x, i)
        h = lam[i + 1] - lam[i]
        if h == 0:  # a grid ending at sigma_min twice (Karras/exponential + final_sigma): a null step
            continue
        ratio = sig_vp[i + 1] / sig_vp[i]
        A = -alpha[i + 1] * math.expm1(-h)  # alpha' (1 - e^{-h})
        if not history or (i == n - 1 and (sig[n] == 0 or n < 15)):
            x = d.mix(x_t=ratio, x0=A)
        elif len(history) == 1 or (i == n - 2 and n < 15):
            r0 = (lam[i] - lam[i - 1]) / h
            x = torch.add(d.mix(x_t=ratio, x0=A * (1 + 0.5 / r0)), history[-1], alpha=-A * 0.5 / r0)
        else:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            B = alpha[i + 1] * (math.expm1(-h) / h + 1)  # coefficient of D1
            C = -alpha[i + 1] * ((math.expm1(-h) + h) / h**2 - 0.5)  # coefficient of D2
            # B D1 + C D2 = k0 D1_0 + k1 D1_1, then D1_0, D1_1 written out in D_i, D_{i-1}, D_{i-2}
            k0 = B * (1 + r0 / (r0 + r1)) + C / (r0 + r1)
            k1 = -B * r0 / (r0 + r1) - C / (r0 + r1)
            m0 = d.mix(x_t=ratio, x0=A + k0 / r0)
            x = _combine(m0, 1.0, [(-k0 / r0 + k1 / r1, history[-1]), (-k1 / r1, history[-2])])
        history = history[-1:] + [d.x0]
    return x


def dpmpp_2m_sde(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) SDE (diffusers' sde-dpmsolver++, midpoint) from the VP sample x `[B, C, …]`."""
    if noise is None:
        raise ValueError("dpmpp_2m_sde needs a noise source")
    sig, alpha, sig_vp, lam = _levels(grid)
    n = grid.num_steps
    d_prev = None
    for i in step_range(n, progress):
        d = denoise(x, i)
        h = lam[i + 1] - lam[i]
        if h == 0:  # a grid ending at sigma_min twice (Karras/exponential + final_sigma): a null step
            continue
        ratio = sig_vp[i + 1] / sig_vp[i] * math.exp(-h)  # (sigma'/sigma) e^{-h}
        A = -alpha[i + 1] * math.expm1(-2 * h)  # alpha' (1 - e^{-2h})
        if d_prev is None or (i == n - 1 and (sig[n] == 0 or n < 15)):
            x = d.mix(x_t=ratio, x0=A)
        else:
            r = (lam[i] - lam[i - 1]) / h
            x = torch.add(d.mix(x_t=ratio, x0=A * (1 + 0.5 / r)), d_prev, alpha=-A * 0.5 / r)
        std = sig_vp[i + 1] * math.sqrt(-math.expm1(-2 * h)) if sig_vp[i + 1] > 0 else 0.0
        if std > 0:
            x = torch.add(x, noise(x), alpha=std)
        d_prev = d.x0
    return x
