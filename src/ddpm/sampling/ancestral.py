"""Ancestral sampling of DDPM (Ho et al. 2020, Alg. 2) on a respaced chain (Nichol & Dhariwal 2021, Sec. 4).

Notation: the grid's alpha_bars ab_{t_0} < … (as steps go) define a respaced chain with
beta'_i = 1 - ab_i / ab_{i+1} (the improved-diffusion respacing), whose posterior q(x' | x, x0) comes from
`process.posterior_coefficients`. Each step draws x' ~ N(mu~(x, x0_hat), var), with var:

| variance      | var                                                                        |
| ------------- | -------------------------------------------------------------------------- |
| `fixed_small` | beta~' (the posterior variance; DDPM's sigma^2 = beta~)                     |
| `fixed_large` | beta' (DDPM's sigma^2 = beta)                                               |
| `learned`     | exp(f log beta' + (1 - f) log beta~'), f = (v + 1) / 2 (Improved DDPM, Eq. 15)  |

where v is the second half of a 2C-channel model output.

The last step returns the posterior mean (no noise), as in Alg. 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import process
from ..config.choices import VARIANCES
from ..schedules import DiscreteSchedule
from .denoiser import Denoise, NoiseFn, step_range
from .grid import Grid

__all__ = ["ddpm", "respaced_schedule"]



def respaced_schedule(grid: Grid) -> DiscreteSchedule:
    """The chain over the grid's levels: betas `[n]` whose alphas_cumprod are the grid's alpha_bars
    (ascending t)."""
    if float(grid.alpha_bars[-1]) != 1.0:
        raise ValueError("ddpm needs final_sigma='zero': its chain ends at clean data (alpha_bar = 1)")
    ab = grid.alpha_bars.flip(0)  # [1, ab_{n-1}, …, ab_0]: ascending t
    return DiscreteSchedule(1 - ab[1:] / ab[:-1], name="respaced")


def ddpm(
    denoise: Denoise,
    x: Tensor,
    grid: Grid,
    *,
    variance: str | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) from the VP sample x `[B, C, …]` at grid point 0;
    `variance=None` means `learned` for a 2C-channel model and `fixed_small` otherwise."""
    if variance not in (None, *VARIANCES):
        raise ValueError(
            f"unknown variance {variance!r}; choose one of {list(VARIANCES)} (or None for automatic)"
        )
    if noise is None:
        raise ValueError("ddpm needs a noise source")
    chain = respaced_schedule(grid)
    coef_x0, coef_xt, var, log_var = (c.tolist() for c in process.posterior_coefficients(chain))
    beta, log_beta = chain.betas.tolist(), chain.betas.log().tolist()
    n = grid.num_steps
    for i in step_range(n, progress):
        j = n - 1 - i  # index in the respaced chain
        d = denoise(x, i)
        mean = d.mix(x0=coef_x0[j], x_t=coef_xt[j])
        if j == 0:
            x = mean
            continue
        kind = variance or ("learned" if d.variance is not None else "fixed_small")
        if kind == "learned":
            if d.variance is None:
                raise ValueError(
                    "variance='learned' needs a model whose output has twice the input channels "
                    "(prediction, then the learned-range v)"
                )
            frac = (d.variance + 1) / 2
            std = torch.exp(0.5 * (frac * log_beta[j] + (1 - frac) * log_var[j]))
            x = torch.addcmul(mean, std, noise(x))
        else:
            v = var[j] if kind == "fixed_small" else beta[j]
            x = torch.add(mean, noise(x), alpha=v**0.5)
    return x
