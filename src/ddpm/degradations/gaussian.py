"""Gaussian noising as a degradation (Bansal et al. 2022, Sec. 3.3): the usual forward process of DDPM.

Notation (as in `ddpm.process`; level t = 1 … T is timestep t - 1 of the schedule, level 0 the data):

| symbol    | code        | meaning                                                              |
| --------- | ----------- | -------------------------------------------------------------------- |
| ab_t      | `table[t]`  | alpha_bar of level t, `[T + 1]` float64, ab_0 = 1                    |
| eps       | `noise`     | the noise of the degradation, `[B, C, H, W]`                           |
| D(x0, t)  | `__call__`  | sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (`process.q_sample`)                 |
| eps_hat   |             | (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t) (`process.eps_from_x0`)     |

D is deterministic because eps is fixed: drawn from `seed` (one noise image shared by the batch) unless
bound to per-image noise by `bind` (training draws it per batch). At sampling time the cold samplers call
`with_estimate`, which re-estimates eps from x_s and x0_hat; then D(x0_hat, s) = x_s, and cold sampling's
x_(s') = x_s - D(x0_hat, s) + D(x0_hat, s') is DDIM's sqrt(ab_s') x0_hat + sqrt(1 - ab_s') eps_hat (eta = 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import process, schedules
from ..noise import Generators, randn
from ..schedules import DiscreteSchedule
from .base import Degradation, level_tensor

__all__ = ["Gaussian"]


class Gaussian(Degradation):
    """D(x0, t) = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps for x0 `[B, C, H, W]`, T = the schedule's length.

    schedule: a `ddpm.schedules.DiscreteSchedule`, or its config (`{"name": "linear", "num_timesteps": 1000}`
    or a bare name); seed: the fixed noise of an unbound call.
    """

    name = "gaussian"

    def __init__(
        self, schedule: DiscreteSchedule | dict[str, Any] | str = "linear", *, seed: int = 0
    ) -> None:
        if not isinstance(schedule, DiscreteSchedule):
            schedule = schedules.from_config(schedule)
        self.schedule, self.seed = schedule, int(seed)
        self.levels = schedule.num_timesteps
        self.table = process.AlphaBars(
            torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod])
        )
        self.noise: Tensor | None = None

    def options(self) -> dict[str, Any]:
        return {"schedule": self.schedule.to_config(), "seed": self.seed}

    def _with_noise(self, noise: Tensor) -> Gaussian:
        bound = Gaussian(self.schedule, seed=self.seed)
        bound.noise = noise
        return bound

    def bind(self, like: Tensor, *, generator: Generators = None) -> Gaussian:
        """This degradation with fresh noise `[B, C, H, W]` shaped like `like`, row i from generator i."""
        return self._with_noise(randn(like.shape, generator=generator, device=like.device, dtype=like.dtype))

    def with_estimate(self, *, x_t: Tensor, x0: Tensor, t: int | Tensor) -> Gaussian:
        """This degradation with eps_hat, the noise that takes the estimate x0 to x_t at level t >= 1."""
        level = level_tensor(t, self.levels, x_t.shape[0], x_t.device)
        if bool((level == 0).any()):
            raise ValueError("the noise cannot be re-estimated at level 0 (the clean image has none)")
        return self._with_noise(process.eps_from_x0(self.table, x_t, level, x0))

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        eps = self.noise
        if eps is None:
            g = torch.Generator().manual_seed(self.seed)
            eps = randn((1, *x0.shape[1:]), generator=g, device=x0.device, dtype=x0.dtype).expand_as(x0)
        elif eps.shape[0] not in (1, x0.shape[0]) or eps.shape[1:] != x0.shape[1:]:
            raise ValueError(
                f"this Gaussian degradation holds noise {tuple(eps.shape)} for images {tuple(x0.shape)}; "
                "bind it to the batch it degrades"
            )
        return process.q_sample(self.table, x0, t, eps.to(x0))
