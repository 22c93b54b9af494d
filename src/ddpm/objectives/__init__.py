"""Training objectives of discrete-time diffusion: L_simple, min-SNR weighting, the Improved-DDPM hybrid loss,
and the full variational bound reported in bits per dimension.

Notation (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "Improved DDPM"; Hang et al. 2023, "min-SNR"):

| symbol          | code                  | meaning                                                      |
| --------------- | --------------------- | ------------------------------------------------------------ |
| x0, x_t, eps    | `x0`, `x_t`, `eps`    | data `[B, C, H, W]` (any `[B, ...]`), noised data, noise      |
| t               | `t`                   | timesteps `[B]`, int64, 0 … T-1 (0 = first noising step)      |
| mu~_t, beta~_t  | `process.q_posterior` | q(x_{t-1} | x_t, x0) = N(mu~_t, beta~_t I) (DDPM Eq. 6-7)     |
| mu_theta, Sigma | `p_mean_log_variance` | p_theta(x_{t-1} | x_t) = N(mu_theta, Sigma_theta), diagonal   |
| v (variance)    | second output half    | log Sigma = f log beta_t + (1-f) log beta~_t, f = (v+1)/2     |
| L_t             | `vlb_term`            | KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t)), t >= 1    |
| L_0             | `vlb_term` at t = 0   | -log p_theta(x0 | x_1), the discretised decoder (DDPM Eq. 13) |
| L_T             | `prior_bpd`           | KL(q(x_T | x0) || N(0, I))                                   |
| SNR(t)          | `process.snr`         | alpha_bar_t / (1 - alpha_bar_t)                              |

Our timestep t is the paper's t+1, so `vlb_terms(...)[:, 0]` is the decoder term L_0 and the prior is taken
at our last index T-1. The bound per dimension is -log p(x0) <= L_T + sum_t L_t (DDPM Eq. 5); bits/dim
divides nats per dimension by ln 2. Images must be 8-bit data mapped to [-1, 1] (k / 127.5 - 1): the decoder
integrates its Gaussian over each value's bin of width 2/255, the two end bins open to -inf and +inf.

All schedule, posterior and parameterisation maths comes from `ddpm.process`; this package adds the losses
(`losses.py`; cold diffusion's restoration loss in `restoration.py`), the Gaussian KL and discretised
likelihood (`likelihood.py`), the reverse-process Gaussian (`reverse.py`) and the bound itself (`vlb.py`).
"""

from __future__ import annotations

from .likelihood import discretized_gaussian_log_likelihood, normal_kl
from .losses import min_snr_weight, sample_timesteps, training_loss
from .restoration import restoration_loss
from .reverse import FIXED_VARIANCES, ReverseGaussian, model_log_variance, p_mean_log_variance
from .vlb import bits_per_dim, prior_bpd, vlb_term, vlb_terms

__all__ = [
    "FIXED_VARIANCES",
    "sample_timesteps",
    "min_snr_weight",
    "training_loss",
    "restoration_loss",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "model_log_variance",
    "ReverseGaussian",
    "p_mean_log_variance",
    "vlb_term",
    "vlb_terms",
    "prior_bpd",
    "bits_per_dim",
]
