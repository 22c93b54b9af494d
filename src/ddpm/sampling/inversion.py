"""DDIM inversion (Song et al. 2021, Sec. 4.3; Dhariwal & Nichol 2021, App. F): run deterministic DDIM
backwards, from a clean x0 up to x_T, so that `ddpm.sample(sampler="ddim")` from that x_T gives x0 back.

Notation (as in ddim.py): grid points 0 … n, point n the terminal (clean) level; ab_i = alpha_bar there.
DDIM's step from point i to i - 1 … read backwards, from point i + 1 (less noise) to point i (more):

    x_i = sqrt(ab_i) x0_hat(x_{i+1}) + sqrt(1 - ab_i) eps_hat(x_{i+1})                (Eq. 13 reversed)

The network is read at the point it leaves (x_{i+1}, t_{i+1}), not at the one DDIM reads it at (x_i, t_i),
so the inversion is exact only as the step shrinks: the reconstruction error falls as `steps` grows.
`fixed_point` > 0 re-reads the network at the current guess of x_i that many times per step (the implicit
equation DDIM's step solves), which closes most of the rest of the gap at that many extra model calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .. import process
from ..guidance import Conditions, check_conditions, classifier_free_guidance
from ..schedules import DiscreteSchedule
from .denoiser import Denoiser, step_range

__all__ = ["invert", "Inversion"]


class Inversion(NamedTuple):
    """x_T `[B, C, …]`; the DDIM reconstruction from it (None unless asked) and its RMSE per sample `[B]`."""

    x_T: Tensor
    reconstruction: Tensor | None
    error: Tensor | None


@torch.no_grad()
def invert(
    model: Callable[..., Tensor],
    x0: Tensor,
    *,
    schedule: DiscreteSchedule,
    steps: int = 50,
    cond: Conditions = None,
    uncond: Conditions = None,
    guidance_scale: float = 1.0,
    prediction: str = "eps",
    spacing: str = "trailing",
    steps_offset: int = 0,
    final_sigma: str = "zero",
    fixed_point: int = 0,
    reconstruct: bool = True,
    progress: bool = False,
) -> Inversion:
    """The x_T `[B, C, …]` from which deterministic DDIM (`ddpm.sample(sampler="ddim", eta=0)` with the same
    schedule, steps, spacing, steps_offset, final_sigma, conditions and guidance) regenerates `x0`.

    x0: clean samples in the model's space (pixels in [-1, 1], or an autoencoder's scaled latents).
    reconstruct: also run that DDIM from x_T and report the root-mean-square error against x0 per sample
    (twice the model calls). Unclipped: x0 clipping would make DDIM's map non-invertible.
    """
    from .api import sample, sampler_grid

    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.ndim < 2:
        raise ValueError("x0 must be a floating-point tensor [B, C, …] of clean samples")
    if not callable(model):
        raise ValueError("model must be callable as model(x_t, t, **cond)")
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"schedule must be a ddpm.schedules.DiscreteSchedule, got {type(schedule).__name__}")
    if isinstance(fixed_point, bool) or int(fixed_point) != fixed_point or fixed_point < 0:
        raise ValueError(
            f"fixed_point must be a whole number >= 0 (model re-reads per step), got {fixed_point}"
        )
    if prediction not in process.PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(process.PREDICTIONS)}")
    check_conditions(cond, uncond, x0.shape[0])
    model_fn = classifier_free_guidance(model, guidance_scale=guidance_scale, cond=cond, uncond=uncond)
    grid = sampler_grid("ddim", schedule, steps, spacing, steps_offset=steps_offset, final_sigma=final_sigma)
    work = torch.float32 if x0.dtype in (torch.float16, torch.bfloat16) else x0.dtype
    x = x0.to(work)
    denoise = Denoiser(model_fn, grid, prediction=prediction, clip_x0=None, like=x, model_dtype=x0.dtype)
    ab = grid.alpha_bars.tolist()
    n = grid.num_steps
    for k in step_range(n, progress):
        i = n - 1 - k  # from point i + 1 to point i
        c0, c1 = ab[i] ** 0.5, (1 - ab[i]) ** 0.5
        x_next = denoise(x, i + 1).mix(x0=c0, eps=c1)
        for _ in range(int(fixed_point)):
            # the step DDIM takes from x_i reads the network at point i: solve x_i = DDIM^-1(x_{i+1}; x_i)
            # DDIM from point i lands on x_{i+1} = sqrt(ab_{i+1}) x0' + sqrt(1 - ab_{i+1}) eps_hat: keep the
            # eps_hat read at the guess, take the x0' that lands on the given x_{i+1}, step up with both
            eps_hat = denoise(x_next, i).eps
            a_from = ab[i + 1]
            x0_fit = (x - (1 - a_from) ** 0.5 * eps_hat) / a_from**0.5
            x_next = c0 * x0_fit + c1 * eps_hat
        x = x_next
    denoise.raise_if_not_finite()
    x_T = x.to(x0.dtype)
    if not reconstruct:
        return Inversion(x_T, None, None)
    rec = sample(model, x_T, schedule=schedule, sampler="ddim", steps=steps, spacing=spacing,
                 steps_offset=steps_offset, final_sigma=final_sigma, prediction=prediction,
                 guidance_scale=guidance_scale, cond=cond, uncond=uncond)  # fmt: skip
    err = (rec.float() - x0.float()).flatten(1).pow(2).mean(1).sqrt()
    return Inversion(x_T, rec, err)
