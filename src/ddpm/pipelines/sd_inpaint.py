"""Inpainting models for `ddpm.sample`: SD's 9-channel inpainting UNet; latent blending for 4-channel ones.

| symbol  | code      | meaning                                                             |
| ------- | --------- | ------------------------------------------------------------------- |
| m       | `mask`    | latent mask `[B, 1, h, w]`: 1 = repaint, 0 = keep                    |
| z_0     | `init`    | the init image's latents `[B, 4, h, w]`                              |
| n       | `noise`   | the run's starting noise `[B, 4, h, w]` (x_T)                         |
| ab      |           | alpha_bar of the grid point the sampler evaluates                    |

Blending (as diffusers' and the web UIs' "inpainting with any model"): before every model call the kept
region of x_t becomes sqrt(ab) z_0 + sqrt(1 - ab) n, the forward process (Ho et al. 2020, Eq. 4) at that
call's level with the run's own noise; the samplers' updates are elementwise, so the repainted region
evolves exactly as if the state had been blended after every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sampling import sampler_grid
from ..schedules import DiscreteSchedule

__all__ = ["latent_mask", "inpainting_unet", "blending_unet"]

def latent_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixel mask `[1, 1, H, W]` -> latent mask `[1, 1, h, w]`: a cell is repainted if any pixel of it is."""
    return F.adaptive_max_pool2d(mask, size)


def inpainting_unet(unet: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The 9-channel UNet on `[x_t, mask, masked-image latents]`; the last two come as the `inpaint` condition
    `[B, 5, h, w]`, so classifier-free guidance batches them with the rest."""

    def model(x: Tensor, t: Tensor, *, context: Tensor, inpaint: Tensor) -> Tensor:
        return unet(torch.cat([x, inpaint.to(x.dtype)], dim=1), t, context=context)

    return model


def blending_unet(
    unet: Callable[..., Tensor],
    schedule: DiscreteSchedule,
    *,
    sampler: str,
    steps: int,
    spacing: str,
    steps_offset: int,
    karras: bool,
    final_sigma: str,
    exponential: bool = False,
) -> Callable[..., Tensor]:
    """A 4-channel UNet seeing x_t with its kept region replaced by z_0 noised to the call's level; the
    condition `blend` `[B, 9, h, w]` holds (z_0, n, m)."""
    # the very grid ddpm.sample walks, so the blend reads each call's noise level from it
    grid = sampler_grid(
        sampler, schedule, steps, spacing, steps_offset=steps_offset, karras=karras, exponential=exponential,
        final_sigma=final_sigma,
    )
    levels = [(float(t), float(ab)) for t, ab in zip(grid.timesteps.tolist(), grid.alpha_bars.tolist())]
    levels.append((0.0, float(grid.alpha_bars[-1])))  # the terminal point (Heun may evaluate there)
    cursor = [0]

    def alpha_bar_at(t: float) -> float:
        for j in range(cursor[0], len(levels)):  # calls come in grid order; a point may repeat
            if levels[j][0] == t:
                cursor[0] = j
                return levels[j][1]
        raise ValueError(f"inpainting blend: timestep {t} is not on the sampling grid")

    def model(x: Tensor, t: Tensor, *, context: Tensor, blend: Tensor) -> Tensor:
        init, noise, m = blend.to(x.dtype).split([x.shape[1], x.shape[1], 1], dim=1)
        ab = alpha_bar_at(float(t[0]))
        known = init * ab**0.5 + noise * (1 - ab) ** 0.5
        return unet(torch.lerp(known, x, m), t, context=context)

    return model
