"""The noise levels a sampler visits, built the way the common tools build them.

Notation (Karras et al. 2022, "EDM"; Ho et al. 2020):

| symbol   | code          | meaning                                                                      |
| -------- | ------------- | ---------------------------------------------------------------------------- |
| t_i      | `timesteps`   | the timestep the network is given at grid point i, `[n]`                     |
| sigma_i  | `sigmas`      | VE noise level sqrt((1 - ab) / ab) at point i, `[n + 1]`; the last: terminal |
| ab_i     | `alpha_bars`  | alpha_bar = 1 / (1 + sigma^2) at point i, `[n + 1]`; 1 where sigma = 0        |

Each sampler family follows the grid of the diffusers scheduler users pair it with, so a spacing name
gives the same grid as there (Lin et al. 2024, Table 2, for the names):

- `discrete` (ddpm, ddim, plms; DDPMScheduler, DDIMScheduler, PNDMScheduler): integer timesteps from
  `schedules.timesteps`; the step after the last grid point goes to the terminal level.
- `sigma` (euler, euler_a, heun; Euler/Heun discrete schedulers): `linspace` is NOT rounded, so the network
  gets float timesteps and sigma is interpolated linearly in t; `leading`/`trailing` as in `discrete`.
- `dpm` (dpmpp_2m; DPMSolverMultistepScheduler): `linspace` and `leading` are built from steps + 1 points
  with the last (t = 0) dropped, because the solver's final step goes to sigma = 0 anyway.

With `karras=True` (Karras et al. 2022, Eq. 5) or `exponential=True` (log sigma evenly spaced) the sigma
family spans the sigmas of its spacing's first and last point; the discrete and dpm families span the whole
schedule (sigma(0) … sigma(T-1)) and give the network the nearest integer timestep. (diffusers' DPM-Solver
and UniPC schedulers round the timesteps of a Karras grid but truncate those of an exponential one; we
round both.)
Zero-terminal-SNR schedules have sigma(T-1) = inf; the sigma and dpm families replace alpha_bar = 0
there by 2^-24 as diffusers does, the discrete family keeps alpha_bar = 0 (fine for v and x0 models).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import schedules
from ..schedules import DiscreteSchedule

__all__ = ["Grid", "FINAL_SIGMAS", "discrete_grid", "sigma_grid", "dpm_grid", "GRIDS", "sigma_schedule"]

FINAL_SIGMAS = ("zero", "sigma_min")
_ZERO_SNR_ALPHA_BAR = 2.0**-24


class Grid(NamedTuple):
    """Model timesteps `[n]` (int64 or float32) and noise levels `[n + 1]` (float64) of one sampling run."""

    timesteps: Tensor
    sigmas: Tensor
    alpha_bars: Tensor
    init_sigma: float

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def tail(self, start: int) -> Grid:
        """The same grid entered at point `start` (img2img: the first `start` steps are skipped)."""
        return Grid(self.timesteps[start:], self.sigmas[start:], self.alpha_bars[start:], self.init_sigma)


def _check(schedule: DiscreteSchedule, steps: int, spacing: str, final_sigma: str) -> None:
    if spacing not in schedules.SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(schedules.SPACINGS)}")
    T = schedule.num_timesteps
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer between 1 and the schedule length {T}, got {steps!r}")
    if final_sigma not in FINAL_SIGMAS:
        raise ValueError(f"unknown final_sigma {final_sigma!r}; choose one of {list(FINAL_SIGMAS)}")


def _table(schedule: DiscreteSchedule, clamp_zero_snr: bool) -> tuple[Tensor, Tensor]:
    """alpha_bar and sigma tables `[T]` (float64)."""
    ab = schedule.alphas_cumprod.clone()
    if clamp_zero_snr:
        ab[ab == 0] = _ZERO_SNR_ALPHA_BAR
    return ab, ((1 - ab) / ab).sqrt()


def _finish(
    timesteps: Tensor,
    sigmas: Tensor,
    alpha_bars: Tensor,
    schedule: DiscreteSchedule,
    final_sigma: str,
    init_sigma: float,
) -> Grid:
    if final_sigma == "zero":
        last_sigma, last_ab = 0.0, 1.0
    else:
        last_ab = float(schedule.alphas_cumprod[0])
        last_sigma = float(schedule.sigmas[0])
    sigmas = torch.cat([sigmas, sigmas.new_tensor([last_sigma])])
    alpha_bars = torch.cat([alpha_bars, alpha_bars.new_tensor([last_ab])])
    if sigmas.numel() > 2 and not bool(torch.all(sigmas[1:-1] < sigmas[:-2])):
        raise ValueError(
            "the grid repeats a noise level (too many steps for this spacing and steps_offset); "
            "use fewer steps or another spacing"
        )
    return Grid(timesteps, sigmas, alpha_bars, init_sigma)


def sigma_schedule(karras: bool, exponential: bool) -> str | None:
    """The name in `schedules.SIGMA_SCHEDULES` that `karras` / `exponential` choose (None: the spacing's own
    levels); ValueError for both."""
    if karras and exponential:
        raise ValueError("karras and exponential are two sigma schedules; choose one of them")
    return "karras" if karras else "exponential" if exponential else None


def _spaced(
    kind: str, sigma_max: float, sigma_min: float, steps: int, table: Tensor, round_t: bool
) -> tuple[Tensor, Tensor]:
    """`steps` levels of the sigma schedule `kind` from sigma_max to sigma_min and their timesteps."""
    sig = schedules.SIGMA_SCHEDULES[kind](sigma_min, sigma_max, steps)
    t = schedules.timestep_at(table, sig)
    return sig, (t.round().to(torch.int64) if round_t else t.to(torch.float32))


def discrete_grid(
    schedule: DiscreteSchedule,
    steps: int,
    spacing: str,
    *,
    steps_offset: int = 0,
    karras: bool = False,
    exponential: bool = False,
    final_sigma: str = "zero",
) -> Grid:
    """Integer timesteps of `schedules.timesteps` (DDPM/DDIM/PNDM); sampling starts from x_T itself."""
    _check(schedule, steps, spacing, final_sigma)
    kind = sigma_schedule(karras, exponential)
    ab_table, sig_table = _table(schedule, clamp_zero_snr=False)
    if kind is not None:
        sig_c = _table(schedule, clamp_zero_snr=True)[1]
        sig, t = _spaced(kind, float(sig_c[-1]), float(sig_c[0]), steps, sig_c, round_t=True)
        ab = schedules.alpha_bar_from_sigma(sig)
    else:
        t = schedules.timesteps(schedule.num_timesteps, steps, spacing, steps_offset=steps_offset)
        sig, ab = sig_table[t], ab_table[t]
    return _finish(t, sig, ab, schedule, final_sigma, init_sigma=1.0)


def _float_grid(T: int, steps: int, spacing: str, steps_offset: int) -> Tensor:
    """diffusers' Euler/Heun timesteps, float32 `[steps]`: float `linspace`, integer `leading`/`trailing`."""
    if spacing == "linspace":
        return torch.linspace(0, T - 1, steps, dtype=torch.float64).to(torch.float32).flip(0)
    if spacing == "leading":
        t = torch.arange(steps, dtype=torch.float64) * (T // steps) + steps_offset
        return t.flip(0).to(torch.float32)
    return ((T - torch.arange(steps, dtype=torch.float64) * (T / steps)).round() - 1).to(torch.float32)


def sigma_grid(
    schedule: DiscreteSchedule,
    steps: int,
    spacing: str,
    *,
    steps_offset: int = 0,
    karras: bool = False,
    exponential: bool = False,
    final_sigma: str = "zero",
) -> Grid:
    """Float timesteps with linearly interpolated sigmas (Euler/Heun discrete schedulers); x_T is scaled by
    `init_sigma`: sigma_0 for `linspace`/`trailing`, sqrt(1 + sigma_0^2) for `leading` (diffusers'
    init_noise_sigma; the exact VP-to-VE factor is sqrt(1 + sigma_0^2), 0.2% more at SD's sigma_0 = 14.6)."""
    _check(schedule, steps, spacing, final_sigma)
    kind = sigma_schedule(karras, exponential)
    _, sig_table = _table(schedule, clamp_zero_snr=True)
    t = _float_grid(schedule.num_timesteps, steps, spacing, steps_offset)
    sig = schedules.sigma_at(sig_table, t.double())
    if kind is not None:
        sig, t = _spaced(kind, float(sig[0]), float(sig[-1]), steps, sig_table, round_t=False)
    s0 = float(sig[0])
    init_sigma = s0 if spacing in ("linspace", "trailing") else (s0**2 + 1) ** 0.5
    return _finish(t, sig, schedules.alpha_bar_from_sigma(sig), schedule, final_sigma, init_sigma)


def dpm_grid(
    schedule: DiscreteSchedule,
    steps: int,
    spacing: str,
    *,
    steps_offset: int = 0,
    karras: bool = False,
    exponential: bool = False,
    final_sigma: str = "zero",
) -> Grid:
    """Integer timesteps of DPMSolverMultistepScheduler (linspace and leading: steps + 1 points, t = 0
    dropped)."""
    _check(schedule, steps, spacing, final_sigma)
    kind = sigma_schedule(karras, exponential)
    T = schedule.num_timesteps
    ab_table, sig_table = _table(schedule, clamp_zero_snr=True)
    if kind is not None:
        sig, t = _spaced(kind, float(sig_table[-1]), float(sig_table[0]), steps, sig_table, round_t=True)
        return _finish(t, sig, schedules.alpha_bar_from_sigma(sig), schedule, final_sigma, init_sigma=1.0)
    if spacing == "linspace":
        t = torch.linspace(0, T - 1, steps + 1, dtype=torch.float64).round().flip(0)[:-1]
    elif spacing == "leading":
        t = (torch.arange(steps + 1, dtype=torch.float64) * (T // (steps + 1))).round().flip(0)[:-1]
        t = t + steps_offset
    else:
        t = (T - torch.arange(steps, dtype=torch.float64) * (T / steps)).round() - 1
    t = t.clamp(0, T - 1).to(torch.int64)
    return _finish(t, sig_table[t], ab_table[t], schedule, final_sigma, init_sigma=1.0)


GRIDS = {"discrete": discrete_grid, "sigma": sigma_grid, "dpm": dpm_grid}
