"""The variational bound of DDPM (Ho et al. 2020, Eq. 5) per timestep and in total, in bits per dimension.

| symbol | code              | meaning                                                                   |
| ------ | ----------------- | ------------------------------------------------------------------------- |
| L_t    | `vlb_term`        | KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t)), t >= 1, bits/dim `[B]` |
| L_0    | `vlb_term`, t = 0 | -log p_theta(x0 | x_1), the discretised Gaussian decoder, bits/dim `[B]`   |
| L_T    | `prior_bpd`       | KL(q(x_T | x0) || N(0, I)), bits/dim `[B]`                               |
| bpd    | `bits_per_dim`    | L_T + sum_t L_t >= -log2 p(x0) / D, `[B]` (D = dimensions per sample)     |

Each L_t is estimated with one draw x_t ~ q(x_t | x0), an unbiased estimate of E_q[L_t]. Evaluation runs in
float64 so that thousand-term sums and near-zero KLs keep their digits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..process import q_posterior, q_sample
from ..schedules import DiscreteSchedule
from ._checks import check_cond, check_data, check_prediction, check_same_shape, check_t, mean_flat
from .likelihood import discretized_gaussian_log_likelihood, normal_kl
from .reverse import FIXED_VARIANCES, p_mean_log_variance

__all__ = ["vlb_term", "vlb_terms", "prior_bpd", "bits_per_dim"]

_LN2 = math.log(2.0)


def vlb_nats(
    x0: Tensor, x_t: Tensor, t: Tensor, mean: Tensor, log_variance: Tensor, schedule: DiscreteSchedule
) -> Tensor:
    """L_t in nats per dimension `[B]` for p_theta = N(mean, e^log_variance): KL, or decoder NLL at t = 0."""
    q = q_posterior(schedule, x0, x_t, t)
    terms = mean_flat(normal_kl(q.mean, q.log_variance_clipped, mean, log_variance))
    first = torch.nonzero(t.detach().cpu() == 0).squeeze(1).to(x0.device)
    if first.numel():  # the decoder only where t = 0: it is the costly part of a whole-bound evaluation
        log_var = log_variance.expand_as(mean)[first]
        log_p = discretized_gaussian_log_likelihood(x0[first], mean=mean[first], log_scale=0.5 * log_var)
        terms = terms.index_put((first,), -mean_flat(log_p))
    return terms


def vlb_term(
    output: Tensor,
    *,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    schedule: DiscreteSchedule,
    prediction: str = "eps",
    learned_variance: bool = False,
    variance: str = "fixed_large",
    clip_x0: bool = False,
) -> Tensor:
    """L_t in bits/dim, float64 `[B]`, of the network output at x_t (DDPM Eq. 5); t = 0 is the decoder NLL."""
    check_prediction(prediction)
    t = check_t(t, schedule, x_t)
    check_same_shape(x0=x0, x_t=x_t)
    check_data(x0)
    x0, x_t = x0.double(), x_t.double()
    p = p_mean_log_variance(
        output.double(), x_t=x_t, t=t, schedule=schedule, prediction=prediction,
        learned_variance=learned_variance, variance=variance, clip_x0=clip_x0,
    )  # fmt: skip
    return vlb_nats(x0, x_t, t, p.mean, p.log_variance, schedule) / _LN2


def prior_bpd(x0: Tensor, *, schedule: DiscreteSchedule) -> Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) in bits/dim, float64 `[B]` (DDPM Eq. 5)."""
    check_data(x0)
    x0 = x0.double()
    ab = schedule.alphas_cumprod[-1].item()
    mean = math.sqrt(ab) * x0
    logvar = torch.full_like(x0, math.log1p(-ab))  # ab < 1 since every beta is positive
    zeros = torch.zeros_like(x0)
    return mean_flat(normal_kl(mean, logvar, zeros, zeros)) / _LN2


@torch.no_grad()
def vlb_terms(
    model: Callable[..., Tensor],
    x0: Tensor,
    *,
    schedule: DiscreteSchedule,
    prediction: str = "eps",
    learned_variance: bool = False,
    cond: Mapping[str, Any] | None = None,
    t_batch: int | None = None,
    noise_generator: torch.Generator | None = None,
    variance: str = "fixed_large",
    clip_x0: bool = False,
) -> Tensor:
    """All T terms of the bound in bits/dim, float64 `[B, T]`; `[:, 0]` is the decoder NLL (DDPM Eq. 5).

    The model is called as `model(x_t, t, **cond)` on `t_batch` timesteps at once (default 1, so it sees
    `t_batch * B` inputs) under `torch.no_grad`; put it in eval mode first. Noise is drawn timestep by
    timestep from `noise_generator` (on its device, in float32), so a seed gives the same terms for any
    `t_batch`.
    `variance` picks the fixed variance of a model without a learned one. `clip_x0=True` clamps x0_hat to
    [-1, 1], the protocol behind the published DDPM and Improved-DDPM numbers.
    """
    check_prediction(prediction)
    check_data(x0)
    if variance not in FIXED_VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {list(FIXED_VARIANCES)}")
    k = 1 if t_batch is None else t_batch
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"t_batch must be a positive integer (timesteps per model call), got {t_batch!r}")
    k = int(k)
    B, T = x0.shape[0], schedule.num_timesteps
    cond = check_cond(cond, B)
    terms = torch.zeros(B, T, dtype=torch.float64, device=x0.device)
    for start in range(0, T, k):
        n = min(k, T - start)
        eps = torch.cat([_randn_like(x0, noise_generator) for _ in range(n)])
        t = torch.arange(start, start + n, device=x0.device).repeat_interleave(B)
        x0_n = _repeat_batch(x0, n)
        x_t = q_sample(schedule, x0_n, t, eps)
        output = model(x_t, t, **{name: _repeat_batch(value, n) for name, value in cond.items()})
        term = vlb_term(
            output, x0=x0_n, x_t=x_t, t=t, schedule=schedule, prediction=prediction,
            learned_variance=learned_variance, variance=variance, clip_x0=clip_x0,
        )  # fmt: skip
        terms[:, start : start + n] = term.reshape(n, B).T
    return terms


def bits_per_dim(
    model: Callable[..., Tensor],
    x0: Tensor,
    *,
    schedule: DiscreteSchedule,
    prediction: str = "eps",
    learned_variance: bool = False,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    t_batch: int | None = None,
    variance: str = "fixed_large",
    clip_x0: bool = False,
) -> Tensor:
    """The variational bound on -log2 p(x0) per dimension, L_T + sum_t L_t (DDPM Eq. 5), float64 `[B]`.

    `x0` holds 8-bit images mapped to [-1, 1] (k / 127.5 - 1), `[B, C, H, W]`. It costs T model evaluations
    per image; `vlb_terms` explains `t_batch`, `generator` (its noise_generator), `variance` and `clip_x0`.
    """
    terms = vlb_terms(
        model, x0, schedule=schedule, prediction=prediction, learned_variance=learned_variance, cond=cond,
        t_batch=t_batch, noise_generator=generator, variance=variance, clip_x0=clip_x0,
    )  # fmt: skip
    return terms.sum(dim=1) + prior_bpd(x0, schedule=schedule).to(terms.device)


def _repeat_batch(value: Any, n: int) -> Any:
    """Tile a per-sample tensor `[B, ...]` to `[n * B, ...]`, timestep-major like x_t; other values pass."""
    if isinstance(value, Tensor):
        return value.repeat(n, *([1] * (value.ndim - 1)))
    return value


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like `x`, drawn in float32 on the generator's device, cast to `x`."""
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)
