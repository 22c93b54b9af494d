"""Cold diffusion samplers (Bansal et al. 2022, "Cold Diffusion", Sec. 3.2): restore, re-degrade, repeat.

Notation:

| symbol    | code           | meaning                                                                   |
| --------- | -------------- | ------------------------------------------------------------------------- |
| D(x, s)   | `degradation`  | the degradation at level s (0 = clean … T), any object with `levels` and  |
|           |                | `__call__` (`ddpm.degradations`)                                          |
| R(x_s, s) | `restore`      | the network's estimate x0_hat of the clean image, `[B, C, H, W]`           |
| s, s'     | `levels[i]`    | the current and the next level of the grid (s' < s; the last s' is 0)     |

- Algorithm 1 (`cold_naive`): x0_hat = R(x_s, s); x_(s') = D(x0_hat, s').
- Algorithm 2 (`cold`): x0_hat = R(x_s, s); x_(s') = x_s - D(x0_hat, s) + D(x0_hat, s').
- Direct (`cold_direct`): x0_hat = R(x_T, T), one call (the paper's baseline).

For D(x, s) = x + s e, Algorithm 2 gives x_(s') = x0 + s' e whatever R answers; Algorithm 1 only as well
as R is right. A degradation with a `with_estimate(x_t=, x0=, t=)` method (Gaussian noising) is re-fitted
to (x_s, x0_hat) at every step before it is applied; that makes Algorithm 2 with Gaussian DDIM (eta = 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import schedules
from .denoiser import dynamic_threshold, step_range

__all__ = ["LevelGrid", "level_grid", "Restorer", "cold", "cold_naive", "cold_direct", "COLD_SPACINGS"]

COLD_SPACINGS = ("trailing", "linspace")  # both start at the top level, where x_T lies


class LevelGrid(NamedTuple):
    """The degradation levels of one cold sampling run, int64 `[n + 1]`: the start level first, 0 last."""

    levels: Tensor

    @property
    def num_steps(self) -> int:
        return self.levels.numel() - 1


def level_grid(
    levels: int, steps: int | None, spacing: str = "trailing", *, start: int | None = None
) -> LevelGrid:
    """`steps` levels from `start` (default T = `levels`) down, then 0; steps None visits every level.

    The levels are `ddpm.schedules.timesteps(start, steps, spacing) + 1`: the grid a Gaussian sampler walks
    on a schedule of length `start`, with level = timestep + 1 (level 0 is the clean image).
    """
    start = levels if start is None else start
    if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= levels:
        raise ValueError(
            f"start_level must be an int in 1 … {levels} (the degradation's levels), got {start!r}"
        )
    if spacing not in COLD_SPACINGS:
        raise ValueError(
            f"cold samplers take spacing {list(COLD_SPACINGS)}, which start at the level of x_T; "
            f"got {spacing!r}"
        )
    steps = start if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= start:
        raise ValueError(f"steps must be None (every level) or an int in 1 … {start}, got {steps!r}")
    t = schedules.timesteps(start, steps, spacing) + 1
    return LevelGrid(torch.cat([t, t.new_zeros(1)]))


class Restorer:
    """R(x_s, s) at the points of a `LevelGrid`: `model_fn(x `[B, C, H, W]`, s `[B]` int64) -> x0_hat`."""

    def __init__(
        self,
        model_fn: Callable[[Tensor, Tensor], Tensor],
        grid: LevelGrid,
        *,
        clip_x0: str | None,
        like: Tensor,
        model_dtype: torch.dtype,
    ) -> None:
        if clip_x0 not in (None, "static", "dynamic"):
            raise ValueError(f"unknown clip_x0 {clip_x0!r}; choose one of [None, 'static', 'dynamic']")
        self.model_fn, self.grid, self.clip_x0, self.model_dtype = model_fn, grid, clip_x0, model_dtype
        batch = like.shape[0]
        self.t = [torch.full((batch,), s, dtype=torch.long, device=like.device) for s in grid.levels.tolist()]
        self.checks: list[Tensor] = []

    def __call__(self, x: Tensor, i: int) -> Tensor:
        """x0_hat = R(x, s_i), in x's dtype."""
        out = self.model_fn(x.to(self.model_dtype), self.t[i])
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(x.shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                "a cold model returns its restoration x0_hat shaped like its input "
                f"{tuple(x.shape)}; got {got}"
            )
        self.checks.append(out.sum(dtype=torch.float64 if out.dtype == torch.float64 else torch.float32))
        out = out.to(x.dtype)
        if self.clip_x0 == "static":
            return out.clamp(-1, 1)
        return dynamic_threshold(out) if self.clip_x0 == "dynamic" else out

    def raise_if_not_finite(self) -> None:
        """ValueError naming the first step whose restoration held a NaN or inf (one sync per run)."""
        if not self.checks:
            return
        ok = torch.isfinite(torch.stack(self.checks))
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            raise ValueError(
                f"the model output is not finite (NaN or inf) at cold step {i + 1} of {self.grid.num_steps} "
                f"(level {int(self.grid.levels[i])}); try clip_x0='static' or running the model in float32"
            )


def _fitted(degradation: Any, x_s: Tensor, x0_hat: Tensor, s: int) -> Any:
    """The degradation re-fitted to (x_s, x0_hat) at level s when it can be (Gaussian), else itself."""
    refit = getattr(degradation, "with_estimate", None)
    return degradation if refit is None else refit(x_t=x_s, x0=x0_hat, t=s)


def cold(
    restore: Callable[[Tensor, int], Tensor],
    x: Tensor,
    grid: LevelGrid,
    *,
    degradation: Any,
    progress: bool = False,
) -> Tensor:
    """Algorithm 2 (improved sampling) from x_s `[B, C, H, W]` at the grid's first level to x_0."""
    levels = grid.levels.tolist()
    for i in step_range(grid.num_steps, progress):
        s, s_next = levels[i], levels[i + 1]
        x0_hat = restore(x, i)  # x0_hat = R(x_s, s)
        D = _fitted(degradation, x, x0_hat, s)
        x = x - D(x0_hat, s) + D(x0_hat, s_next)  # x_(s') = x_s - D(x0_hat, s) + D(x0_hat, s')
    return x


def cold_naive(
    restore: Callable[[Tensor, int], Tensor],
    x: Tensor,
    grid: LevelGrid,
    *,
    degradation: Any,
    progress: bool = False,
) -> Tensor:
    """Algorithm 1 (naive sampling) from x_s `[B, C, H, W]` at the grid's first level to x_0."""
    levels = grid.levels.tolist()
    for i in step_range(grid.num_steps, progress):
        s, s_next = levels[i], levels[i + 1]
        x0_hat = restore(x, i)  # x0_hat = R(x_s, s)
        x = _fitted(degradation, x, x0_hat, s)(x0_hat, s_next)  # x_(s') = D(x0_hat, s')
    return x


def cold_direct(
    restore: Callable[[Tensor, int], Tensor],
    x: Tensor,
    grid: LevelGrid,
    *,
    degradation: Any,
    progress: bool = False,
) -> Tensor:
    """Direct restoration x0_hat = R(x_s, s) at the grid's first level, in one model call."""
    if grid.num_steps != 1:
        raise ValueError(f"cold_direct restores in one step; its grid has {grid.num_steps}")
    return restore(x, 0)
