"""The reverse-process Gaussian p_theta(x_{t-1} | x_t) = N(mu_theta, Sigma_theta) of a trained network
(Ho et al. 2020, "DDPM", Eq. 1 and 7; Nichol & Dhariwal 2021, "Improved DDPM", Eq. 15).

| symbol    | code               | meaning                                                                  |
| --------- | ------------------ | ------------------------------------------------------------------------ |
| x0_hat    | `x0_hat`           | the network output read as x0 (`process.to_x0_eps`), optionally clipped   |
| mu_theta  | `mean`             | mu~_t(x0_hat, x_t): the posterior mean with x0 replaced by x0_hat         |
| log Sigma | `log_variance`     | fixed (beta_t or beta~_t) or the learned range of Improved DDPM          |
| v         | second output half | learned-range interpolation, frac = (v + 1) / 2                           |

Learned-variance convention, shared with the samplers and the UNet: the output has 2C channels for x_t with C;
the first C are the eps / x0 / v prediction and the last C are v, with
log Sigma = frac log beta_t + (1 - frac) log beta~_t (beta~_0 clipped to beta~_1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..config.choices import VARIANCES
from ..process import extract, posterior_coefficients, q_posterior, to_x0_eps
from ..schedules import DiscreteSchedule
from ._checks import split_output

__all__ = ["FIXED_VARIANCES", "model_log_variance", "ReverseGaussian", "p_mean_log_variance"]

# Fixed variances for models without a learned one (DDPM Sec. 3.2): beta~_t or beta_t.
FIXED_VARIANCES = tuple(v for v in VARIANCES if v != "learned")


def model_log_variance(
    schedule: DiscreteSchedule,
    t: Tensor,
    like: Tensor,
    *,
    v: Tensor | None = None,
    variance: str = "fixed_large",
) -> Tensor:
    """log Sigma_theta(t), broadcastable against `like` `[B, ...]` (Improved DDPM Eq. 15 when `v` is given).

    With `v` (`[B, C, ...]`, the second half of a learned-variance output): the learned range between
    log beta~_t (clipped at t = 0) and log beta_t; v outside [-1, 1] extrapolates, as in the reference code.
    Without `v`: `fixed_small` is beta~_t (log clipped at t = 0) and `fixed_large` is beta_t, except that
    t = 0 takes beta~_1, as both DDPM reference codes do for a better decoder likelihood.
    """
    _, _, post_var, log_post_var = posterior_coefficients(schedule)
    if v is not None:
        frac = (v + 1) / 2
        log_beta = torch.log(schedule.betas)
        return frac * extract(log_beta, t, like) + (1 - frac) * extract(log_post_var, t, like)
    if variance == "fixed_small":
        return extract(log_post_var, t, like)
    if variance == "fixed_large":
        large = torch.cat([post_var[1:2], schedule.betas[1:]]) if len(schedule) > 1 else schedule.betas
        return extract(torch.log(large), t, like)
    raise ValueError(f"unknown variance {variance!r}; choose one of {list(FIXED_VARIANCES)}")


class ReverseGaussian(NamedTuple):
    """p_theta(x_{t-1} | x_t) = N(mean, exp(log_variance)); `x0_hat` is the network's reading of x0."""

    mean: Tensor
    log_variance: Tensor
    x0_hat: Tensor


def p_mean_log_variance(
    output: Tensor,
    *,
    x_t: Tensor,
    t: Tensor,
    schedule: DiscreteSchedule,
    prediction: str = "eps",
    learned_variance: bool = False,
    variance: str = "fixed_large",
    clip_x0: bool = False,
) -> ReverseGaussian:
    """mu_theta = mu~_t(x0_hat, x_t) (DDPM Eq. 7) and log Sigma_theta of the network output at x_t."""
    mean_out, var_out = split_output(output, x_t, learned_variance)
    x0_hat, _ = to_x0_eps(schedule, x_t, t, mean_out, prediction)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
    mean = q_posterior(schedule, x0_hat, x_t, t).mean
    log_var = model_log_variance(schedule, t, x_t, v=var_out, variance=variance)
    return ReverseGaussian(mean, log_var, x0_hat)
