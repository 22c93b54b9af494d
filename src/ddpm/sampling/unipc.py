"""UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework"), B(h) = e^h - 1 ("bh2"), in
data prediction: a multistep predictor (UniP-p) and a corrector (UniC-p) that reuses the model call at the
predicted point, so n steps take n model calls.

Notation (VP process, as dpm_solver.py; Zhao et al. 2023, Alg. 2 and App. C):

| symbol        | code              | meaning                                                          |
| ------------- | ----------------- | ---------------------------------------------------------------- |
| alpha, sigma  | `alpha`, `sig_vp` | sqrt(ab) and sqrt(1 - ab) at a grid point                        |
| lambda        | `lam`             | log(alpha / sigma), half the log-SNR                             |
| h             | `h`               | lambda' - lambda (the step); hh = -h for data prediction          |
| m_k           | `history`         | the denoiser's x0_hat at earlier grid points                      |
| r_k           | `r`               | (lambda_{s_k} - lambda_{s_0}) / h, D1_k = (m_k - m_0) / r_k       |
| rho           | `rho`             | weights solving R rho = g with R_jk = r_k^(j-1), g_j = phi_j factors |

    predictor: x' = (sigma'/sigma) x - alpha' (e^{hh} - 1) m_0 - alpha' B(h) sum_k rho_p,k D1_k
    corrector: x_c = (sigma/sigma_prev) x_prev - alpha (e^{hh} - 1) m_prev - alpha B(h) (sum_k rho_c,k D1_k
               + rho_c,last (m_now - m_prev))

The predictor of order 2 uses rho_p = 1/2 and the corrector of order 1 rho_c = 1/2 (the paper's choice for
those orders, as diffusers' UniPCMultistepScheduler). The order warms up over the first steps and falls
back to 1 at the last step (and to at most 2 at the second-to-last), as that scheduler's
`lower_order_final`; the last model call is not followed by a correction.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from .denoiser import Denoise, NoiseFn, step_range
from .grid import Grid

__all__ = ["unipc", "unipc_3"]


def _rhos(r: list[float], hh: float, order: int, *, predictor: bool) -> list[float]:
    """The UniP (predictor) or UniC (corrector) weights of B(h) = e^hh - 1 for the ratios r_k (and r = 1)."""
    if predictor and order == 2:
        return [0.5]
    if not predictor and order == 1:
        return [0.5]
    rks = [*r, 1.0]
    h_phi_k = math.expm1(hh) / hh - 1  # phi_2(hh) hh-scaled, the series of App. C
    B_h = math.expm1(hh)
    factorial = 1
    rows, g = [], []
    for j in range(1, order + 1):
        rows.append([rk ** (j - 1) for rk in rks])
        g.append(h_phi_k * factorial / B_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    # A 1x1 to 3x3 system of Python floats: solved on the host in numpy, never touching the device.
    R, b = np.array(rows, dtype=np.float64), np.array(g, dtype=np.float64)
    if predictor:  # order - 1 unknowns: the earlier points only
        R, b = R[:-1, :-1], b[:-1]
    return np.linalg.solve(R, b).tolist()


def _update(
    x: Tensor,
    k_from: int,
    k_to: int,
    m0: Tensor,
    earlier: list[tuple[int, Tensor]],
    rho: list[float],
    levels: tuple[list[float], list[float], list[float]],
    m_new: Tensor | None = None,
) -> Tensor:
    """x at grid point k_to from x at k_from: the B(h) update with x0_hat m0 at k_from, the earlier
    (index, x0_hat) pairs weighted by rho, and (corrector) m_new at k_to weighted by rho[-1]."""
    alpha, sig_vp, lam = levels
    h = lam[k_to] - lam[k_from]
    hh = -h
    a_t = alpha[k_to]
    c_x = sig_vp[k_to] / sig_vp[k_from]
    c_m0 = -a_t * math.expm1(hh)
    out = x * c_x
    B_h = math.expm1(hh)
    terms: list[tuple[float, Tensor]] = []
    for (k, m), w in zip(earlier, rho):
        r = (lam[k] - lam[k_from]) / h
        c = -a_t * B_h * w / r  # w D1_k = w (m_k - m0) / r_k
        terms.append((c, m))
        c_m0 -= c
    if m_new is not None:
        c = -a_t * B_h * rho[-1]
        terms.append((c, m_new))
        c_m0 -= c
    out.add_(m0, alpha=c_m0)
    for c, m in terms:
        out.add_(m, alpha=c)
    return out


def _unipc(denoise: Denoise, x: Tensor, grid: Grid, order: int, progress: bool) -> Tensor:
    sig = grid.sigmas.tolist()
    alpha = [1 / math.sqrt(1 + s * s) for s in sig]
    sig_vp = [s * a for s, a in zip(sig, alpha)]
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    levels = (alpha, sig_vp, lam)
    n = grid.num_steps
    history: list[tuple[int, Tensor]] = []  # (grid index, x0_hat), newest last
    x_prev, order_prev = x, 1
    for i in step_range(n, progress):
        m_now = denoise(x, i).x0
        if i > 0:  # UniC: correct x_i with the model call made there
            k0, m0 = history[-1]
            earlier = history[-order_prev:-1][::-1] if order_prev > 1 else []
            hh = -(lam[i] - lam[k0])
            r = [(lam[k] - lam[k0]) / (lam[i] - lam[k0]) for k, _ in earlier]
            rho = _rhos(r, hh, order_prev, predictor=False)
            x = _update(x_prev, k0, i, m0, earlier, rho, levels, m_new=m_now)
        history = [*history[-(order - 1) :], (i, m_now)] if order > 1 else [(i, m_now)]
        this_order = min(order, n - i, len(history))
        x_prev, order_prev = x, this_order
        if lam[i + 1] == lam[i]:  # a null last step (a grid ending at sigma_min twice): x stays
            continue
        earlier = history[-this_order:-1][::-1] if this_order > 1 else []
        rho: list[float] = []
        if earlier:
            hh = -(lam[i + 1] - lam[i])
            r = [(lam[k] - lam[i]) / (lam[i + 1] - lam[i]) for k, _ in earlier]
            rho = _rhos(r, hh, this_order, predictor=True)
        x = _update(x, i, i + 1, m_now, earlier, rho, levels)
    return x


def unipc(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """UniPC-2, bh2 (Zhao et al. 2023; UniPCMultistepScheduler(solver_order=2)) from the VP sample x."""
    return _unipc(denoise, x, grid, 2, progress)


def unipc_3(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """UniPC-3, bh2 (UniPCMultistepScheduler(solver_order=3), its recommendation for unconditional models)."""
    return _unipc(denoise, x, grid, 3, progress)
