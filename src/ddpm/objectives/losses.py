"""Training losses: L_simple with eps / x0 / v targets (Ho et al. 2020, Eq. 14; Salimans & Ho 2022),
min-SNR-gamma weighting (Hang et al. 2023) and the Improved-DDPM hybrid loss for learned variances
(Nichol & Dhariwal 2021).

| symbol     | code                    | meaning                                                       |
| ---------- | ----------------------- | ------------------------------------------------------------- |
| output     | `output`                | network output at x_t, `[B, C, ...]` or `[B, 2C, ...]`         |
| target     | `process.target`        | eps, x0 or v = sqrt(ab) eps - sqrt(1 - ab) x0                  |
| w(t)       | `min_snr_weight`        | min-SNR-gamma weight of the squared error, `[B]`               |
| p(t)       | `sample_timesteps`      | uniform (DDPM) or logit-normal over t/T (Esser et al. 2024)    |
| lambda     | `vlb_weight`            | weight of L_vlb in the hybrid loss (0.001 in Improved DDPM)    |
| N          | `num_timesteps_for_vlb` | number of terms L_vlb sums (T of the schedule by default)      |

The training loop does the forward pass (under DDP / autocast as it likes) and calls `training_loss`, which
computes in float32 whatever the output dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config.choices import TIMESTEP_SAMPLINGS
from ..process import snr, target
from ..schedules import DiscreteSchedule
from ._checks import check_prediction, check_same_shape, check_t, mean_flat, split_output
from .reverse import p_mean_log_variance
from .vlb import vlb_nats

__all__ = ["sample_timesteps", "min_snr_weight", "training_loss"]



def sample_timesteps(
    batch: int,
    num_timesteps: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    distribution: str = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
) -> Tensor:
    """Training timesteps, int64 `[B]`, drawn on the generator's device, then moved to `device`.

    "uniform": t ~ Uniform{0, …, T-1} (DDPM Alg. 1). "logit_normal": t = floor(T * sigmoid(u)) with
    u ~ N(loc, scale^2), the logit-normal of Esser et al. 2024 (Eq. 19) on the discrete grid: it spends the
    steps on the middle of the schedule, and on its noisy end for loc > 0, where a conditional model
    decides layout and colour, rather than on the nearly clean steps that only refine edges.
    """
    if int(batch) != batch or batch < 0:
        raise ValueError(f"batch must be a non-negative integer, got {batch!r}")
    if int(num_timesteps) != num_timesteps or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if distribution not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep distribution must be one of {TIMESTEP_SAMPLINGS}, got {distribution!r}")
    if not (math.isfinite(loc) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"logit-normal timesteps need a finite loc and a positive scale, got {loc}, {scale}")
    draw_on = generator.device if generator is not None else device
    n = int(num_timesteps)
    if distribution == "uniform":
        t = torch.randint(0, n, (int(batch),), generator=generator, device=draw_on)
    else:
        u = torch.randn(int(batch), generator=generator, device=draw_on, dtype=torch.float64) * scale + loc
        t = (torch.sigmoid(u) * n).floor().clamp(0, n - 1).to(torch.int64)
    return t.to(device) if device is not None else t


def min_snr_weight(schedule: DiscreteSchedule, t: Tensor, *, gamma: float, prediction: str = "eps") -> Tensor:
    """Min-SNR-gamma weight (Hang et al. 2023, Eq. 9), float32 `[B]` on the device of `t`.

    The x0-space weight min(SNR, gamma) becomes min(SNR, gamma) / SNR for eps targets and
    min(SNR, gamma) / (SNR + 1) for v targets, because |x0 error|^2 = |eps error|^2 / SNR
    = |v error|^2 / (SNR + 1).
    """
    check_prediction(prediction)
    number = isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
    if not (number and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"min_snr_gamma must be a positive number (the paper uses 5), got {gamma!r}")
    s = snr(schedule, t)  # float64 [B] on the CPU
    if prediction == "eps":
        # min(SNR, gamma) / SNR written as min(1, gamma / SNR): equal, and 1 rather than 0/0 where SNR = 0.
        w = (gamma / s).clamp(max=1.0)
    elif prediction == "x0":
        w = s.clamp(max=gamma)
    else:
        w = s.clamp(max=gamma) / (s + 1)
    return w.to(device=torch.as_tensor(t).device, dtype=torch.float32)


def training_loss(
    output: Tensor,
    *,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    eps: Tensor,
    schedule: DiscreteSchedule,
    prediction: str = "eps",
    learned_variance: bool = False,
    min_snr_gamma: float | None = None,
    vlb_weight: float = 0.001,
    num_timesteps_for_vlb: int | None = None,
) -> Tensor:
    """Per-sample loss `[B]` (float32) of the network output at x_t = q_sample(x0, t, eps) (DDPM Eq. 14).

    L_simple is the mean squared error of the first C output channels against the target of `prediction`,
    optionally weighted by min-SNR-gamma. With `learned_variance` the output has 2C channels and the loss is
    the Improved-DDPM hybrid (Sec. 3.1):

        L_hybrid = L_simple + vlb_weight * N * L_t,    N = num_timesteps_for_vlb or T,

    with L_t this timestep's term of the bound in nats per dimension, computed on the detached mean so that
    only the variance channels learn from it. Since L_vlb = sum_t L_t = N E_t[L_t], the term is the paper's
    lambda L_vlb for any T (T = 1000, lambda = 0.001 gives weight 1, as the reference's rescaled loss). The
    reference measures L_t in bits; pass vlb_weight = 0.001 / ln 2 to match its numbers. At t = 0, L_t is the
    discretised decoder NLL, which assumes 8-bit data in [-1, 1]. Without learned variance the last two
    options are unused.
    """
    check_prediction(prediction)
    t = check_t(t, schedule, x_t)
    check_same_shape(x0=x0, x_t=x_t, eps=eps)
    out = output.float()
    x0, x_t, eps = x0.float(), x_t.float(), eps.float()
    mean_out, var_out = split_output(out, x_t, learned_variance)

    loss = mean_flat((mean_out - target(schedule, x0, t, eps, prediction)) ** 2)
    if min_snr_gamma is not None:
        loss = loss * min_snr_weight(schedule, t, gamma=min_snr_gamma, prediction=prediction).to(loss.device)
    if not learned_variance:
        return loss

    if not (math.isfinite(vlb_weight) and vlb_weight >= 0):
        raise ValueError(
            f"vlb_weight must be a non-negative number (Improved DDPM: 0.001), not {vlb_weight!r}"
        )
    n_terms = schedule.num_timesteps if num_timesteps_for_vlb is None else num_timesteps_for_vlb
    if int(n_terms) != n_terms or n_terms < 1:
        raise ValueError(f"num_timesteps_for_vlb must be a positive integer, got {num_timesteps_for_vlb!r}")
    # Stop the bound's gradient at the mean: L_simple alone trains it (Improved DDPM Sec. 3.1).
    frozen = torch.cat([mean_out.detach(), var_out], dim=1)
    p = p_mean_log_variance(
        frozen, x_t=x_t, t=t, schedule=schedule, prediction=prediction, learned_variance=True
    )
    return loss + (vlb_weight * n_terms) * vlb_nats(x0, x_t, t, p.mean, p.log_variance, schedule)
