"""Euler, Euler ancestral and Heun on the probability-flow ODE in sigma space (Karras et al. 2022, "EDM").

Notation (VE view of the VP process, Karras et al. 2022, Sec. 2 and Table 1):

| symbol     | code       | meaning                                                                  |
| ---------- | ---------- | ------------------------------------------------------------------------ |
| x          | `x`        | VE sample x = x_t / sqrt(ab), `[B, C, …]`, noise level sigma             |
| c_in       | `c_in`     | 1 / sqrt(1 + sigma^2) = sqrt(ab): the network sees x_t = c_in x          |
| D(x; s)    | `d.x0`     | the denoiser's x0_hat at level s                                         |
| dx/dsigma  | `slope`    | (x - D(x; sigma)) / sigma (Eq. 3 with s(t) = 1, sigma(t) = t)             |

The samplers take x already in sigma space at grid point 0 (`ddpm.sample` multiplies x_T by the grid's
`init_sigma`) and return x at the terminal level (x0 itself when it is 0). They match k-diffusion's
`sample_euler`/`sample_euler_ancestral`/`sample_heun` and diffusers' Euler/EulerAncestral/Heun discrete
schedulers; Heun's step into sigma = 0 is an Euler step (Alg. 1, line 8's condition).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .denoiser import Denoise, NoiseFn, step_range
from .grid import Grid

__all__ = ["euler", "euler_a", "heun"]


def _levels(grid: Grid) -> tuple[list[float], list[float]]:
    sigmas = grid.sigmas.tolist()
    return sigmas, [1 / math.sqrt(1 + s * s) for s in sigmas]


def euler(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """Euler's method: x' = x + (sigma' - sigma) (x - D(x; sigma)) / sigma (Karras et al. 2022, Alg. 1 without
    the correction), evaluated as (sigma'/sigma) x + (1 - sigma'/sigma) D, which has no cancellation."""
    sig, c_in = _levels(grid)
    for i in step_range(grid.num_steps, progress):
        r = sig[i + 1] / sig[i]
        x = denoise(x * c_in[i], i).mix(x_t=r / c_in[i], x0=1 - r)  # r x + (1 - r) D
    return x


def euler_a(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """Euler ancestral: an Euler step to sigma_down, then fresh noise of std sigma_up, with
    sigma_up^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2 and sigma_down^2 = sigma'^2 - sigma_up^2 (the
    ancestral step of k-diffusion's `sample_euler_ancestral`, eta = 1)."""
    if noise is None:
        raise ValueError("euler_a needs a noise source")
    sig, c_in = _levels(grid)
    for i in step_range(grid.num_steps, progress):
        s, s_next = sig[i], sig[i + 1]
        sigma_up = math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
        sigma_down = math.sqrt(s_next**2 - sigma_up**2)
        r = sigma_down / s
        x = denoise(x * c_in[i], i).mix(x_t=r / c_in[i], x0=1 - r)
        if sigma_up > 0:
            x = torch.add(x, noise(x), alpha=sigma_up)
    return x


def heun(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1 with S_churn = 0): two model calls per step,
    one (Euler) for the step into sigma = 0."""
    sig, c_in = _levels(grid)
    for i in step_range(grid.num_steps, progress):
        s, s_next = sig[i], sig[i + 1]
        d = denoise(x * c_in[i], i)
        r = s_next / s
        x_euler = d.mix(x_t=r / c_in[i], x0=1 - r)
        if s_next == 0:
            x = x_euler
            continue
        # x' = x + (s' - s)/2 (slope + slope'), slope = (x - D)/s, slope' = (x_euler - D')/s'
        h1, h2 = (s_next - s) / (2 * s), (s_next - s) / (2 * s_next)
        d2 = denoise(x_euler * c_in[i + 1], i + 1)
        x = torch.add(d.mix(x_t=(1 + h1) / c_in[i], x0=-h1), d2.mix(x_t=h2 / c_in[i + 1], x0=-h2))
    return x
