"""The forward process q and its posterior, and conversions between parameterisations.

Notation (Ho et al. 2020; Salimans & Ho 2022 for v):

| symbol            | code                | meaning                                                   |
| ----------------- | ------------------- | --------------------------------------------------------- |
| x0, x_t           | `x0`, `x_t`         | data and its noised version, `[B, ...]`                    |
| eps               | `eps`               | the standard-normal noise of q(x_t | x0)                    |
| ab_t              | `alpha_bar`         | alpha_bar_t of the schedule, broadcast to `[B, 1, ...]`    |
| v                 | `v`                 | sqrt(ab) eps - sqrt(1 - ab) x0 (velocity)                   |
| mu~_t, beta~_t    | `q_posterior`       | mean and variance of q(x_{t-1} | x_t, x0) (DDPM Eq. 6-7)    |
| SNR(t)            | `snr`               | ab_t / (1 - ab_t)                                          |

`t` is always a tensor of discrete timesteps `[B]` (int64). Coefficients are gathered in
float64 and cast to the dtype of the tensor they multiply.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .config import choices
from .schedules import DiscreteSchedule

__all__ = [
    "PREDICTIONS",
    "AlphaBars",
    "extract",
    "q_sample",
    "q_posterior",
    "Posterior",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_eps",
    "x0_from_v",
    "eps_from_v",
    "to_x0_eps",
    "target",
    "snr",
]

PREDICTIONS = choices.PREDICTIONS


class AlphaBars(NamedTuple):
    """Duck-typed stand-in for a DiscreteSchedule holding arbitrary alpha_bars `[n]`: the conversions here
    read only `alphas_cumprod`, so they can be evaluated at any grid's levels."""

    alphas_cumprod: Tensor


def extract(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """Gather `values[t]` (`[T]`) and shape it `[B, 1, 1, …]` to broadcast against `like` `[B, …]`."""
    t = torch.as_tensor(t, device=values.device).long()
    out = values[t]
    return out.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _ab(schedule: DiscreteSchedule, t: Tensor, like: Tensor) -> Tensor:
    return extract(schedule.alphas_cumprod, t, like)


def q_sample(schedule: DiscreteSchedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (DDPM Eq. 4)."""
    ab = schedule.alphas_cumprod
    return extract(ab.sqrt(), t, x0) * x0 + extract((1 - ab).sqrt(), t, x0) * eps


class Posterior(NamedTuple):
    mean: Tensor
    variance: Tensor
    log_variance_clipped: Tensor


def posterior_coefficients(schedule: DiscreteSchedule) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(coef_x0, coef_xt, beta~, log beta~ clipped), float64 `[T]` each (DDPM Eq. 7).

    mu~_t = coef_x0 x0 + coef_xt x_t, with coef_x0 = beta_t sqrt(ab_{t-1}) / (1 - ab_t) and
    coef_xt = (1 - ab_{t-1}) sqrt(alpha_t) / (1 - ab_t); beta~_t = beta_t (1 - ab_{t-1}) / (1 - ab_t).
    beta~_0 = 0, so its log is clipped to log beta~_1 (Improved DDPM, as in its reference code).
    """
    betas, ab, ab_prev = schedule.betas, schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    coef_x0 = betas * ab_prev.sqrt() / (1 - ab)
    coef_xt = (1 - ab_prev) * (1 - betas).sqrt() / (1 - ab)
    var = betas * (1 - ab_prev) / (1 - ab)
    if var.numel() > 1:
        log_var = torch.log(torch.cat([var[1:2], var[1:]]))
    else:
        log_var = torch.log(betas)
    return coef_x0, coef_xt, var, log_var


def q_posterior(schedule: DiscreteSchedule, x0: Tensor, x_t: Tensor, t: Tensor) -> Posterior:
    """q(x_{t-1} | x_t, x0) = N(mu~_t, beta~_t I) (DDPM Eq. 6-7); variance tensors broadcast `[B, 1, …]`."""
    coef_x0, coef_xt, var, log_var = posterior_coefficients(schedule)
    mean = extract(coef_x0, t, x_t) * x0 + extract(coef_xt, t, x_t) * x_t
    return Posterior(mean, extract(var, t, x_t), extract(log_var, t, x_t))


def x0_from_eps(schedule: DiscreteSchedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
    ab = schedule.alphas_cumprod
    return extract(ab.rsqrt(), t, x_t) * x_t - extract(((1 - ab) / ab).sqrt(), t, x_t) * eps


def eps_from_x0(schedule: DiscreteSchedule, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    ab = schedule.alphas_cumprod
    return (x_t - extract(ab.sqrt(), t, x_t) * x0) * extract((1 - ab).rsqrt(), t, x_t)


def v_from_eps(schedule: DiscreteSchedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022, Sec. 4)."""
    ab = schedule.alphas_cumprod
    return extract(ab.sqrt(), t, x0) * eps - extract((1 - ab).sqrt(), t, x0) * x0


def x0_from_v(schedule: DiscreteSchedule, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """x0 = sqrt(ab) x_t - sqrt(1 - ab) v."""
    ab = schedule.alphas_cumprod
    return extract(ab.sqrt(), t, x_t) * x_t - extract((1 - ab).sqrt(), t, x_t) * v


def eps_from_v(schedule: DiscreteSchedule, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """eps = sqrt(1 - ab) x_t + sqrt(ab) v."""
    ab = schedule.alphas_cumprod
    return extract((1 - ab).sqrt(), t, x_t) * x_t + extract(ab.sqrt(), t, x_t) * v


def to_x0_eps(
    schedule: DiscreteSchedule, x_t: Tensor, t: Tensor, output: Tensor, prediction: str
) -> tuple[Tensor, Tensor]:
    """Read a network output in the given parameterisation as the pair (x0_hat, eps_hat)."""
    if prediction == "eps":
        return x0_from_eps(schedule, x_t, t, output), output
    if prediction == "x0":
        return output, eps_from_x0(schedule, x_t, t, output)
    if prediction == "v":
        return x0_from_v(schedule, x_t, t, output), eps_from_v(schedule, x_t, t, output)
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(PREDICTIONS)}")


def target(schedule: DiscreteSchedule, x0: Tensor, t: Tensor, eps: Tensor, prediction: str) -> Tensor:
    """The regression target of the network for `prediction` in {eps, x0, v}."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_eps(schedule, x0, t, eps)
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(PREDICTIONS)}")


def snr(schedule: DiscreteSchedule, t: Tensor) -> Tensor:
    """SNR(t) = ab_t / (1 - ab_t), float64 `[B]`."""
    ab = schedule.alphas_cumprod[torch.as_tensor(t).long().cpu()]
    return ab / (1 - ab)
