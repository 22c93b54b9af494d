"""Noise schedules of discrete-time diffusion and the step grids samplers walk.

Notation (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "Improved DDPM"):

| symbol        | code              | meaning                                              |
| ------------- | ----------------- | ---------------------------------------------------- |
| T             | `num_timesteps`   | number of discrete steps, t = 0 … T-1                 |
| beta_t        | `betas[t]`        | variance added at step t                              |
| alpha_t       | `alphas[t]`       | 1 - beta_t                                           |
| alpha_bar_t   | `alphas_cumprod`  | prod_{s<=t} alpha_s, so q(x_t|x_0) = N(sqrt(ab) x0, (1-ab) I) |
| sigma_t       | `sigmas[t]`       | sqrt((1 - ab) / ab): noise level of the VE view (Karras et al. 2022) |

All schedule arrays are float64 `[T]`; samplers cast to the working dtype at the last moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .config import choices

__all__ = [
    "DiscreteSchedule",
    "linear",
    "cosine",
    "scaled_linear",
    "sigmoid",
    "rescale_zero_terminal_snr",
    "from_config",
    "SCHEDULES",
    "SPACINGS",
    "timesteps",
    "karras_sigmas",
    "exponential_sigmas",
    "SIGMA_SCHEDULES",
    "sigma_at",
    "timestep_at",
    "alpha_bar_from_sigma",
]


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """A beta schedule `betas [T]` (float64) and the quantities derived from it."""

    betas: Tensor
    name: str = "custom"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu().flatten()
        if b.numel() < 1:
            raise ValueError("a schedule needs at least one beta")
        if not torch.all((b > 0) & (b <= 1)):
            raise ValueError(f"betas must lie in (0, 1]; got min {float(b.min()):g}, max {float(b.max()):g}")
        object.__setattr__(self, "betas", b)
        object.__setattr__(self, "alphas", 1.0 - b)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - b, dim=0))

    alphas: Tensor = field(init=False, repr=False)
    alphas_cumprod: Tensor = field(init=False, repr=False)

    @property
    def num_timesteps(self) -> int:
        return self.betas.numel()

    def __len__(self) -> int:
        return self.num_timesteps

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        """alpha_bar_{t-1} with alpha_bar_{-1} = 1, `[T]`."""
        return torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])

    @property
    def sigmas(self) -> Tensor:
        """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), `[T]` (infinite where alpha_bar_t = 0)."""
        ab = self.alphas_cumprod
        return ((1.0 - ab) / ab).sqrt()

    @property
    def log_snr(self) -> Tensor:
        """lambda_t = log(alpha_bar_t / (1 - alpha_bar_t)), `[T]`."""
        ab = self.alphas_cumprod
        return torch.log(ab) - torch.log1p(-ab)

    def to_config(self) -> dict[str, Any]:
        """A JSON-able description that `from_config` turns back into this schedule."""
        if self.name in SCHEDULES:
            return {"name": self.name, **self.params}
        return {"name": "custom", "betas": self.betas.tolist()}

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"DiscreteSchedule({self.name}, T={self.num_timesteps}{', ' + extra if extra else ''})"


def _finish(betas: Tensor, name: str, params: dict[str, Any], zero_terminal_snr: bool) -> DiscreteSchedule:
    s = DiscreteSchedule(betas, name=name, params=params)
    return rescale_zero_terminal_snr(s) if zero_terminal_snr else s


def linear(
    num_timesteps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    zero_terminal_snr: bool = False,
) -> DiscreteSchedule:
    """DDPM (Ho et al. 2020, Sec. 4): betas linear from `beta_start` to `beta_end`."""
    _check_T(num_timesteps)
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    params = dict(num_timesteps=num_timesteps, beta_start=beta_start, beta_end=beta_end)
    return _finish(betas, "linear", params | _zt(zero_terminal_snr), zero_terminal_snr)


def scaled_linear(
    num_timesteps: int = 1000,
    *,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    zero_terminal_snr: bool = False,
) -> DiscreteSchedule:
    """Latent diffusion / Stable Diffusion: sqrt(beta) linear from sqrt(beta_start) to sqrt(beta_end)."""
    _check_T(num_timesteps)
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    params = dict(num_timesteps=num_timesteps, beta_start=beta_start, beta_end=beta_end)
    return _finish(betas, "scaled_linear", params | _zt(zero_terminal_snr), zero_terminal_snr)


def cosine(
    num_timesteps: int = 1000,
    *,
    s: float = 0.008,
    max_beta: float = 0.999,
    zero_terminal_snr: bool = False,
) -> DiscreteSchedule:
    """Improved DDPM (Nichol & Dhariwal 2021, Eq. 17): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2).

    beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t), max_beta).
    """
    _check_T(num_timesteps)
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    params = dict(num_timesteps=num_timesteps, s=s, max_beta=max_beta)
    return _finish(betas, "cosine", params | _zt(zero_terminal_snr), zero_terminal_snr)


def sigmoid(
    num_timesteps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    zero_terminal_snr: bool = False,
) -> DiscreteSchedule:
    """GeoDiff (Xu et al. 2022): betas = sigmoid(linspace(-6, 6, T)) scaled into [beta_start, beta_end]."""
    _check_T(num_timesteps)
    x = torch.linspace(-6, 6, num_timesteps, dtype=torch.float64)
    betas = torch.sigmoid(x) * (beta_end - beta_start) + beta_start
    params = dict(num_timesteps=num_timesteps, beta_start=beta_start, beta_end=beta_end)
    return _finish(betas, "sigmoid", params | _zt(zero_terminal_snr), zero_terminal_snr)


def rescale_zero_terminal_snr(schedule: DiscreteSchedule) -> DiscreteSchedule:
    """Lin et al. 2024 ("Common diffusion noise schedules are flawed", Alg. 1): shift and scale
    sqrt(alpha_bar) so that alpha_bar_{T-1} = 0 exactly while alpha_bar_0 is unchanged."""
    sqrt_ab = schedule.alphas_cumprod.sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    betas = 1 - alphas
    params = dict(schedule.params)
    params["zero_terminal_snr"] = True
    return DiscreteSchedule(betas, name=schedule.name, params=params)


def _zt(flag: bool) -> dict[str, Any]:
    return {"zero_terminal_snr": True} if flag else {}


def _check_T(num_timesteps: int) -> None:
    if int(num_timesteps) != num_timesteps or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")


SCHEDULES = {"linear": linear, "cosine": cosine, "scaled_linear": scaled_linear, "sigmoid": sigmoid}


def from_config(config: dict[str, Any] | str) -> DiscreteSchedule:
    """Build a schedule from `DiscreteSchedule.to_config()` output or a bare name."""
    if isinstance(config, str):
        config = {"name": config}
    config = dict(config)
    name = config.pop("name", None)
    if name == "custom":
        return DiscreteSchedule(torch.tensor(config["betas"], dtype=torch.float64))
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**config)


# --------------------------------------------------------------------------------------------
# Step grids
# --------------------------------------------------------------------------------------------

SPACINGS = choices.SPACINGS


def timesteps(num_timesteps: int, steps: int, spacing: str = "trailing", *, steps_offset: int = 0) -> Tensor:
    """The `steps` discrete timesteps a sampler visits, descending, int64 `[steps]`.

    The names follow the common convention (Lin et al. 2024, Table 2):
    - `leading`:  t_i = i * (T // steps) + steps_offset, i = 0 … steps-1 (SD 1.x uses steps_offset=1);
    - `linspace`: round(linspace(0, T-1, steps));
    - `trailing`: round(T - i * T/steps) - 1, i = 0 … steps-1, so the first step is always T-1.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(SPACINGS)}")
    if int(steps) != steps or not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"steps must be an integer between 1 and the schedule length {num_timesteps}, got {steps!r}"
        )
    T = num_timesteps
    if spacing == "leading":
        ratio = T // steps
        t = torch.arange(steps, dtype=torch.float64) * ratio + steps_offset
        t = t.round()
    elif spacing == "linspace":
        t = torch.linspace(0, T - 1, steps, dtype=torch.float64).round()
    else:
        ratio = T / steps
        # np.arange(T, 0, -ratio) in float64: T - i*ratio for i in 0..steps-1
        t = (T - torch.arange(steps, dtype=torch.float64) * ratio).round() - 1
        t = t.flip(0)
    t = t.clamp(0, T - 1).to(torch.int64)
    return t.flip(0)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, *, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022 (Eq. 5): sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho,
    float64 `[n]`, descending from `sigma_max` to `sigma_min`."""
    if n < 1:
        raise ValueError(f"need at least one sigma, got n={n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> Tensor:
    """The "exponential" schedule (k-diffusion's `get_sigmas_exponential`, A1111's "Exponential"): log sigma
    evenly spaced, sigma_i = exp(log s_max + i/(n-1) (log s_min - log s_max)), float64 `[n]`, descending."""
    if n < 1:
        raise ValueError(f"need at least one sigma, got n={n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()


SIGMA_SCHEDULES = {"karras": karras_sigmas, "exponential": exponential_sigmas}


# --------------------------------------------------------------------------------------------
# Noise levels between the discrete timesteps
# --------------------------------------------------------------------------------------------


def sigma_at(sigmas: Tensor, t: Tensor | float) -> Tensor:
    """sigma at fractional timesteps `t`: linear interpolation in t of the table `sigmas [T]`, with t clamped
    to [0, T-1] (the convention of Euler-type samplers on a float grid); float64, shaped like `t`."""
    table = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0, table.numel() - 1)
    if table.numel() == 1:
        return table.expand(t.shape).clone()
    lo = t.floor().long().clamp(max=table.numel() - 2)
    w = t - lo
    return table[lo] + w * (table[lo + 1] - table[lo])


def timestep_at(sigmas: Tensor, sigma: Tensor | float) -> Tensor:
    """The fractional timestep whose noise level is `sigma`: log sigma interpolated linearly between the
    entries of the ascending table `sigmas [T]`, clamped to [0, T-1] (the inverse k-diffusion and diffusers
    use to give a network trained on discrete t the levels of a Karras grid); float64, shaped like `sigma`."""
    log_table = torch.as_tensor(sigmas, dtype=torch.float64).flatten().log()
    log_sigma = torch.as_tensor(sigma, dtype=torch.float64).clamp(min=1e-10).log()
    if log_table.numel() == 1:
        return torch.zeros_like(log_sigma)
    lo = (torch.searchsorted(log_table, log_sigma.flatten(), right=True) - 1).clamp(0, log_table.numel() - 2)
    lo = lo.reshape(log_sigma.shape)
    low, high = log_table[lo], log_table[lo + 1]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    return lo + w


def alpha_bar_from_sigma(sigma: Tensor | float) -> Tensor:
    """alpha_bar = 1 / (1 + sigma^2), the inverse of `DiscreteSchedule.sigmas` (sigma = 0 gives 1, inf
    gives 0); float64."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return 1.0 / (1.0 + sigma**2)
