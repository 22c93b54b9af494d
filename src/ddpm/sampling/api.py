"""`ddpm.sample`: one call for every sampler, guidance, x0 clipping and img2img starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import process
from ..config.choices import COLD_SAMPLER_NAMES
from ..degradations import check_degradation
from ..guidance import Conditions, check_conditions, classifier_free_guidance
from ..noise import Generators, check_generators, noise_source
from ..schedules import DiscreteSchedule
from .ancestral import ddpm
from .cold import Restorer, cold, cold_direct, cold_naive, level_grid
from .ddim import ddim
from .denoiser import AlphaBars, Denoiser
from .dpm_solver import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from .euler import euler, euler_a, heun
from .grid import GRIDS, Grid
from .lms import lms
from .plms import plms
from .unipc import unipc, unipc_3

__all__ = ["sample", "StepCallback", "SAMPLERS", "COLD_SAMPLERS", "GAUSSIAN_SAMPLERS", "sampler_grid"]


class _Family(NamedTuple):
    grid: str  # key of grid.GRIDS
    sigma_space: bool  # takes x in sigma (VE) space instead of the VP sample
    stochastic: bool


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "plms": plms,
    "euler": euler,
    "euler_a": euler_a,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "unipc": unipc,
    "unipc_3": unipc_3,
    "lms": lms,
    "cold": cold,
    "cold_naive": cold_naive,
    "cold_direct": cold_direct,
}
COLD_SAMPLERS = COLD_SAMPLER_NAMES  # they restore a degradation (ddpm.degradations) and need one
GAUSSIAN_SAMPLERS = tuple(name for name in SAMPLERS if name not in COLD_SAMPLERS)

_FAMILIES = {
    "ddpm": _Family("discrete", False, True),
    "ddim": _Family("discrete", False, False),
    "plms": _Family("discrete", False, False),
    "euler": _Family("sigma", True, False),
    "euler_a": _Family("sigma", True, True),
    "heun": _Family("sigma", True, False),
    "dpmpp_2m": _Family("dpm", False, False),
    "dpmpp_3m": _Family("dpm", False, False),
    "dpmpp_2m_sde": _Family("dpm", False, True),
    "unipc": _Family("dpm", False, False),  # UniPCMultistepScheduler builds DPM-Solver's grid
    "unipc_3": _Family("dpm", False, False),
    "lms": _Family("sigma", True, False),
}


def sampler_grid(
    sampler: str,
    schedule: DiscreteSchedule,
    steps: int,
    spacing: str = "trailing",
    *,
    steps_offset: int = 0,
    karras: bool = False,
    exponential: bool = False,
    final_sigma: str = "zero",
) -> Grid:
    """The step grid `ddpm.sample` walks for `sampler` (each family builds it as its diffusers twin does)."""
    if sampler not in _FAMILIES:
        raise ValueError(f"unknown Gaussian sampler {sampler!r}; choose one of {list(GAUSSIAN_SAMPLERS)}")
    build = GRIDS[_FAMILIES[sampler].grid]
    return build(schedule, steps, spacing, steps_offset=steps_offset, karras=karras, exponential=exponential,
                 final_sigma=final_sigma)  # fmt: skip


def _start(
    grid: Grid, noise: Tensor, init: Tensor | None, strength: float, steps: int, sigma_space: bool
) -> tuple[Grid, Tensor]:
    """The grid from the starting point on and the sampler's initial state (VP, or VE for sigma samplers)."""
    if init is None:
        if strength != 1.0:
            raise ValueError(f"strength={strength} needs init=, the image to start from (img2img)")
        return grid, noise * grid.init_sigma if sigma_space else noise
    if tuple(init.shape) != tuple(noise.shape):
        raise ValueError(
            f"init has shape {tuple(init.shape)} but noise has {tuple(noise.shape)}; they must match"
        )
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1] (1 = start from pure noise), got {strength}")
    n_run = min(int(steps * strength), steps)
    if n_run < 1:
        raise ValueError(f"strength={strength} leaves no step out of {steps}; raise strength or steps")
    grid = grid.tail(steps - n_run)
    # x_t = sqrt(ab) init + sqrt(1 - ab) noise at the entry level (process.q_sample at a grid level)
    ab = grid.alpha_bars[:1]
    x = process.q_sample(AlphaBars(ab), init.to(noise), torch.zeros(noise.shape[0], dtype=torch.long), noise)
    if sigma_space:
        x = x * (1 + float(grid.sigmas[0]) ** 2) ** 0.5
    return grid, x


@torch.no_grad()
def sample(
    model: Callable[..., Tensor],
    noise: Tensor,
    *,
    schedule: DiscreteSchedule | None = None,
    sampler: str = "dpmpp_2m",
    steps: int | None = None,
    spacing: str = "trailing",
    prediction: str | None = None,
    eta: float = 0.0,
    karras: bool = False,
    exponential: bool = False,
    guidance_scale: float = 1.0,
    cond: Conditions = None,
    uncond: Conditions = None,
    clip_x0: str | None = None,
    generator: Generators = None,
    progress: bool = False,
    steps_offset: int = 0,
    final_sigma: str = "zero",
    variance: str | None = None,
    init: Tensor | None = None,
    strength: float = 1.0,
    degradation: Any = None,
    start_level: int | None = None,
    trajectory: list[Tensor] | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Draw x0 `[B, C, …]` from `model(x_t, t, **cond)`, starting at the standard-normal x_T = `noise`.

    sampler: one of SAMPLERS; spacing: `leading`/`linspace`/`trailing` (with `steps_offset`, e.g. 1 for
    SD 1.x's leading grid); steps: None = 20; karras: Karras et al. 2022 sigmas; exponential: log-evenly
    spaced sigmas (A1111's "Exponential"; not with karras); prediction: what the model
    outputs (eps, the default; x0, v; a 2C-channel output adds Improved DDPM's learned variance); eta: DDIM's
    noise (ddim only); variance: ddpm's `fixed_small`/`fixed_large`/`learned` (None: learned iff the model
    has 2C channels); clip_x0: None, `static` ([-1, 1]) or `dynamic` (Imagen's percentile thresholding) on
    every x0_hat; generator: one CPU torch.Generator, or one per sample, for the noise of stochastic
    samplers; final_sigma: `zero` ends at clean data, `sigma_min` at the level of t = 0 (diffusers'
    final_sigmas_type, DDIM's set_alpha_to_one=False); init/strength: img2img, start from `init` noised
    with `noise` at the grid point int(steps * strength) steps before the end.

    Cold diffusion (`sampler` in COLD_SAMPLERS, see `sampling/cold.py`): `noise` is the degraded x_T (or
    x_t at `start_level`), `degradation` the operator the model inverts, `model(x_t, t)` returns x0_hat at
    level t; steps: None = every level; spacing `trailing` or `linspace`; no schedule (the degradation
    holds its levels).

    trajectory: a list that receives every state x_s the model is evaluated at (VP samples for the Gaussian
    samplers; heun and plms evaluate some points twice), then the result: the path from x_T to x_0.

    callback: `callback(step, steps, x0_hat)` after each of the run's `steps` sampler steps (step = 1 …
    steps; img2img counts only the steps it runs), with x0_hat `[B, C, …]` of the step's last model call
    (data space; SD latents for SD). It reads, never changes the run (same result with or without it);
    an exception it raises stops the run and propagates (a server cancels a job this way). It replaces
    the tqdm bar of `progress`.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 2:
        raise ValueError("noise must be a floating-point tensor [B, C, …] of standard-normal values")
    if not callable(model):
        raise ValueError("model must be callable as model(x_t, t, **cond)")
    batch = noise.shape[0]
    check_generators(generator, batch)
    check_conditions(cond, uncond, batch)
    model_fn = classifier_free_guidance(model, guidance_scale=guidance_scale, cond=cond, uncond=uncond)
    if trajectory is not None:
        model_fn = _recording(model_fn, trajectory)
    # the sampler's state stays in float32 for half-precision noise (x in sigma space reaches sigma_max |z|)
    work = torch.float32 if noise.dtype in (torch.float16, torch.bfloat16) else noise.dtype
    if sampler in COLD_SAMPLERS:
        _check_cold_call(sampler, degradation, schedule=schedule, prediction=prediction, eta=eta,
                         karras=karras, exponential=exponential, steps_offset=steps_offset,
                         final_sigma=final_sigma, variance=variance,
                         init=init, strength=strength)  # fmt: skip
        x = _sample_cold(model_fn, noise.to(work), sampler=sampler, degradation=degradation, steps=steps,
                         spacing=spacing, start_level=start_level, clip_x0=clip_x0, model_dtype=noise.dtype,
                         progress=progress, callback=callback)  # fmt: skip
        return _finish(x.to(noise.dtype), trajectory)
    if degradation is not None or start_level is not None:
        raise ValueError(
            f"sampler {sampler!r} samples Gaussian diffusion and cannot restore a degradation "
            f"({type(degradation).__name__}); a model trained against a degradation is sampled with "
            f"sampler= one of {list(COLD_SAMPLERS)}"
        )
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"schedule must be a ddpm.schedules.DiscreteSchedule, got {type(schedule).__name__}")
    steps = 20 if steps is None else steps
    prediction = "eps" if prediction is None else prediction
    if prediction not in process.PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(process.PREDICTIONS)}")
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"eta applies to the ddim sampler only (got eta={eta} with {sampler!r})")
    if variance is not None and sampler != "ddpm":
        raise ValueError(
            f"variance applies to the ddpm sampler only (got variance={variance!r} with {sampler!r})"
        )
    family = _FAMILIES[sampler]
    grid = sampler_grid(sampler, schedule, steps, spacing, steps_offset=steps_offset, karras=karras,
                        exponential=exponential, final_sigma=final_sigma)  # fmt: skip
    grid, x = _start(grid, noise.to(work), init, strength, steps, family.sigma_space)
    denoiser = Denoiser(
        model_fn, grid, prediction=prediction, clip_x0=clip_x0, like=x, model_dtype=noise.dtype
    )
    options: dict[str, Any] = {"progress": progress}
    denoise: Callable[[Tensor, int], Any] = denoiser
    if callback is not None:
        denoise, options["progress"] = _watched(denoiser, grid.num_steps, callback)
    if family.stochastic or (sampler == "ddim" and eta > 0):
        options["noise"] = noise_source(generator)
    if sampler == "ddim":
        options["eta"] = eta
    if sampler == "ddpm":
        options["variance"] = variance
    x = SAMPLERS[sampler](denoise, x, grid, **options)
    denoiser.raise_if_not_finite()
    return _finish(x.to(noise.dtype), trajectory)


StepCallback = Callable[[int, int, Tensor], None]


def _watched(
    denoise: Callable[[Tensor, int], Any],
    steps: int,
    callback: StepCallback,
    x0_of: Callable[[Any], Tensor] = lambda d: d.x0,
) -> tuple[Callable[[Tensor, int], Any], Callable[[int], None]]:
    """`denoise` that remembers its latest reading, and the step hook (`step_range`) that hands
    `callback` the step count and that reading's x0_hat."""
    latest: list[Any] = []

    def watched(x: Tensor, i: int) -> Any:
        out = denoise(x, i)
        latest[:] = [out]
        return out

    def hook(step: int) -> None:
        callback(step, steps, x0_of(latest[0]))

    return watched, hook


def _recording(model_fn: Callable[..., Tensor], trajectory: list[Tensor]) -> Callable[..., Tensor]:
    """`model_fn` that first appends each state it is asked about to `trajectory`."""

    def recorded(x: Tensor, t: Tensor) -> Tensor:
        trajectory.append(x.detach().clone())
        return model_fn(x, t)

    return recorded


def _finish(x: Tensor, trajectory: list[Tensor] | None) -> Tensor:
    if trajectory is not None:
        trajectory.append(x.detach().clone())
    return x


def _sample_cold(
    model_fn: Callable[..., Tensor], x: Tensor, *, sampler: str, degradation: Any, steps: int | None,
    spacing: str, start_level: int | None, clip_x0: str | None, model_dtype: torch.dtype, progress: bool,
    callback: StepCallback | None = None,
) -> Tensor:
    """A cold sampler's run from the degraded x `[B, C, H, W]` (sampling/cold.py)."""
    levels = check_degradation(degradation, like=x)
    if sampler == "cold_direct" and steps not in (None, 1):
        raise ValueError(f"cold_direct restores in one model call; leave steps out (got steps={steps})")
    grid = level_grid(levels, 1 if sampler == "cold_direct" else steps, spacing, start=start_level)
    restore = Restorer(model_fn, grid, clip_x0=clip_x0, like=x, model_dtype=model_dtype)
    step: Any = restore
    hook: Any = progress
    if callback is not None:
        step, hook = _watched(restore, grid.num_steps, callback, x0_of=lambda x0: x0)
    x = SAMPLERS[sampler](step, x, grid, degradation=degradation, progress=hook)
    restore.raise_if_not_finite()
    return x


def _check_cold_call(sampler: str, degradation: Any, **given: Any) -> None:
    """ValueError for a cold sampler without a degradation, or with an option of the Gaussian samplers."""
    if degradation is None:
        raise ValueError(
            f"sampler={sampler!r} restores a degradation: pass degradation=, the one the model was trained "
            "to invert (e.g. ddpm.degradations.Blur()); a Gaussian diffusion model is sampled with one of "
            f"{list(GAUSSIAN_SAMPLERS)}"
        )
    if given["prediction"] not in (None, "x0"):
        raise ValueError(
            "cold samplers read the model's output as x0_hat = R(x_t, t); "
            f"prediction={given['prediction']!r} does not apply (leave it out, or pass 'x0')"
        )
    wrong = [key for key, default in (("schedule", None), ("variance", None), ("init", None))
             if given[key] is not default]  # fmt: skip
    defaults = (("eta", 0.0), ("karras", False), ("exponential", False), ("steps_offset", 0),
                ("final_sigma", "zero"), ("strength", 1.0))  # fmt: skip
    wrong += [key for key, default in defaults if given[key] != default]
    if wrong:
        raise ValueError(
            f"{', '.join(k + '=' for k in wrong)} applies to the Gaussian samplers only, not to sampler="
            f"{sampler!r}: the degradation holds its levels, and a degraded image is restored with "
            "noise=x_t, start_level=t"
        )
