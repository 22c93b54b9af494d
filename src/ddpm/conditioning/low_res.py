"""The low-resolution input of a super-resolution model and its noise-conditioning augmentation.

Cascaded Diffusion Models (Ho et al. 2022, Sec. 3-4) and Imagen (Saharia et al. 2022, Sec. 2.5) train the SR
stage on a low-res image corrupted to a random level and tell the network that level, so at sampling time
it tolerates the artefacts of the stage below. Here the level a in [0, 1] is a position on the model's own
schedule:

| symbol    | code            | meaning                                                                   |
| --------- | --------------- | ------------------------------------------------------------------------- |
| x_lo      | `low`           | the low-res image `[B, C, s, s]` in [-1, 1]                               |
| a         | `level`         | augmentation level `[B]` in [0, 1]: 0 clean, 1 the schedule's last step    |
| ab(a)     | `alpha_bar_at`  | log-linear interpolation of [1, ab_0, …, ab_{T-1}] at position a * T        |
| z         | `augment`       | sqrt(ab(a)) x_lo + sqrt(1 - ab(a)) eps, eps ~ N(0, I)                      |

ab(0) = 1 exactly, so level 0 is the clean input, and level k / T is the forward process at step k - 1.
The network embeds a * 1000 with the timestep embedding's sinusoids (`ddpm.models.unet.AUG_EMBED_SCALE`).
`downsample` (antialiased bilinear) is the one map from a high-res image to its low-res version: training
inputs, the benchmark's consistency check and the CLI's resizing all use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schedules import DiscreteSchedule

__all__ = ["downsample", "upsample", "alpha_bar_at", "augment", "blur", "check_level"]


def downsample(x: Tensor, size: int) -> Tensor:
    """`[B, C, H, W]` -> `[B, C, size, size]` by antialiased bilinear resizing (the low-res version)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True).to(x.dtype)


def upsample(x: Tensor, size: tuple[int, int] | int) -> Tensor:
    """Bilinear upsampling `[B, C, h, w]` -> `[B, C, H, W]`: how the UNet sees its low-res input."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)


def check_level(level: float, what: str = "aug_level") -> float:
    """`level` as a float in [0, 1], else a ValueError that says what the number means."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= float(level) <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1] (a fraction of the noise schedule: 0 = clean "
                         f"low-res input, 1 = pure noise; 0.1-0.3 suits a cascade); got {level!r}")
    return float(level)


def alpha_bar_at(schedule: DiscreteSchedule, level: Tensor) -> Tensor:
    """ab(a) `[B]` (float64): [1, ab_0, …, ab_{T-1}] interpolated log-linearly at position a * T."""
    ab = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod.double().cpu()])
    log_ab = ab.clamp(min=1e-30).log()
    pos = level.double().cpu().clamp(0, 1) * schedule.num_timesteps
    lo = pos.floor().long().clamp(max=schedule.num_timesteps - 1)
    frac = pos - lo.double()
    return torch.exp(torch.lerp(log_ab[lo], log_ab[lo + 1], frac))


def augment(low: Tensor, level: Tensor, eps: Tensor, schedule: DiscreteSchedule) -> Tensor:
    """z = sqrt(ab(a)) x_lo + sqrt(1 - ab(a)) eps per sample: `low`, `eps` `[B, C, s, s]`, `level` `[B]`."""
    ab = alpha_bar_at(schedule, level).to(low.device)
    shape = (-1,) + (1,) * (low.ndim - 1)
    a, b = ab.sqrt().view(shape).to(low.dtype), (1 - ab).sqrt().view(shape).to(low.dtype)
    return a * low + b * eps.to(low)


def blur(x: Tensor, sigmas: Tensor | Sequence[float]) -> Tensor:
    """Gaussian blur of each image `[B, C, H, W]` with its own standard deviation `sigmas [B]` (pixels; 0
    leaves it unchanged), separable, reflect padding (Ho et al. 2022's blur augmentation)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    b, c, h, w = x.shape
    if sig.numel() != b:
        raise ValueError(f"blur needs one sigma per image: {b} images, {sig.numel()} sigmas")
    radius = max(1, math.ceil(3 * float(sig.max()))) if sig.numel() else 1
    radius = min(radius, h - 1, w - 1)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(taps[None] ** 2) / (2 * sig.clamp(min=1e-6)[:, None] ** 2))
    k = torch.where(sig[:, None] > 0, k, (taps[None] == 0).double())
    k = (k / k.sum(1, keepdim=True)).to(x.dtype).to(x.device)  # [B, K]
    kernels = k.repeat_interleave(c, dim=0)[:, None]  # [B*C, 1, K]
    z = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    z = F.conv2d(z, kernels[:, :, None, :], groups=b * c)  # along W
    z = F.conv2d(z, kernels[:, :, :, None], groups=b * c)  # along H
    return z.reshape(b, c, h, w)
