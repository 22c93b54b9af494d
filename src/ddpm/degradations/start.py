"""Where generation starts for a degradation (Bansal et al. 2022, Sec. 5.1).

A fully blurred image is nearly flat at its channel means, and so nearly the same for every image with
the same means: to generate, draw the means c `[C]` from their distribution on the training data (a
Gaussian with a full C x C covariance, fitted by `ChannelMeans.fit`; the paper fits a mixture), flatten
them into an image, degrade that to level T, and add a little noise so that images with close means
still part:

    x_T = D(c 1, T) + noise z,   c ~ N(mu, Sigma),  z ~ N(0, I)

For a blur D(c 1, T) = c 1; for a mask, the unmasked border keeps c; a fade ends at its target whatever c
is. The prior travels in the model file (`to_dict` / `from_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..noise import Generators, randn
from .base import bind, check_degradation

__all__ = ["ChannelMeans", "start"]


@dataclass(frozen=True)
class ChannelMeans:
    """N(mean, cov) of the per-image channel means, and the std of the noise added to the start."""

    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    noise: float = 0.02

    @classmethod
    def fit(cls, images: Tensor, *, noise: float = 0.02) -> ChannelMeans:
        """Fit on training images `[N, C, H, W]` (N >= 2)."""
        if images.ndim != 4 or images.shape[0] < 2:
            raise ValueError(
                f"ChannelMeans.fit needs at least two images [N, C, H, W], got {tuple(images.shape)}"
            )
        means = images.detach().double().mean(dim=(2, 3))  # [N, C]
        cov = torch.atleast_2d(torch.cov(means.T))
        return cls(tuple(means.mean(0).tolist()), tuple(map(tuple, cov.tolist())), float(noise))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "cov": [list(r) for r in self.cov], "noise": self.noise}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelMeans:
        return cls(tuple(d["mean"]), tuple(map(tuple, d["cov"])), float(d.get("noise", 0.02)))

    def sample(self, batch: int, *, generator: Generators = None) -> Tensor:
        """c `[B, C]` (float64), row i from generator i."""
        mean = torch.tensor(self.mean, dtype=torch.float64)
        cov = torch.tensor(self.cov, dtype=torch.float64)
        # the covariance of a few thousand means can be singular (a constant channel): jitter its diagonal
        chol = torch.linalg.cholesky(cov + 1e-9 * torch.eye(len(self.mean), dtype=torch.float64))
        z = randn((batch, len(self.mean)), generator=generator, dtype=torch.float64)
        return mean + z @ chol.T


def start(
    degradation: Any,
    prior: ChannelMeans,
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Tensor]:
    """The degradation bound to this batch (`bind`) and x_T = D(c 1, T) + noise z, `shape` `[B, C, H, W]`.

    With a list of generators, image i (its random mask centre, its means, its noise) depends only on
    generator i; the returned degradation is the one to sample with.
    """
    levels = check_degradation(degradation)
    batch, channels = shape[0], shape[1]
    if len(prior.mean) != channels:
        raise ValueError(f"the prior holds {len(prior.mean)} channel means but the images have {channels}")
    like = torch.empty(shape, device=device, dtype=dtype)
    bound = bind(degradation, like, generator=generator)
    c = prior.sample(batch, generator=generator).to(device=device, dtype=dtype)
    flat = c[:, :, None, None].expand(shape).contiguous()
    x = bound(flat, levels)
    if prior.noise > 0:
        x = x + prior.noise * randn(shape, generator=generator, device=device, dtype=dtype)
    return bound, x
