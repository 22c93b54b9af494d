"""Cold-diffusion models in the pixel pipeline: their degradation and start prior read from the model file,
generation from the channel-means start, restoration of given degraded images, and the errors for asking
a Gaussian sampler to sample a cold model (or the reverse).

Image i of a call uses a CPU generator seeded `seed + i` for its start (channel means, noise) and for the
degradation's random parts (a random mask centre), so it comes out the same alone and in any batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..config.choices import COLD_SAMPLER_NAMES, SAMPLER_NAMES
from ..degradations import ChannelMeans, bind, make_degradation, start
from ..io.model_meta import DiffusionMeta

__all__ = ["ColdParts", "cold_parts", "check_sampler", "cold_steps", "generate_batch", "restore_batch"]

GAUSSIAN_SAMPLER_NAMES = tuple(s for s in SAMPLER_NAMES if s not in COLD_SAMPLER_NAMES)


class ColdParts(NamedTuple):
    """What a cold model file adds to a pixel model: the degradation it restores and its start prior."""

    degradation: Any
    prior: ChannelMeans | None


def cold_parts(diffusion: DiffusionMeta) -> ColdParts | None:
    """The degradation and start prior of a model file's diffusion section (None for Gaussian models)."""
    spec = diffusion.degradation
    if spec is None:
        return None
    options = {k: v for k, v in spec.items() if k != "name"}
    start_prior = diffusion.start
    return ColdParts(make_degradation(spec["name"], **options),
                     ChannelMeans.from_dict(start_prior) if start_prior else None)  # fmt: skip


def check_sampler(sampler: str, parts: ColdParts | None) -> None:
    """ValueError naming the fix: a Gaussian sampler on a cold model, or a cold sampler on a Gaussian one."""
    if parts is not None and sampler not in COLD_SAMPLER_NAMES:
        name = type(parts.degradation).__name__
        raise ValueError(
            f"this model restores a {name} degradation (cold diffusion), which the Gaussian sampler "
            f"{sampler!r} cannot sample; use --sampler cold (Algorithm 2), cold_naive (Algorithm 1) or "
            "cold_direct"
        )
    if parts is None and sampler in COLD_SAMPLER_NAMES:
        raise ValueError(
            f"sampler {sampler!r} restores a degradation, and this is a Gaussian diffusion model; use one of "
            f"{list(GAUSSIAN_SAMPLER_NAMES)}, or train a cold model ([diffusion] degradation = \"blur\", …)"
        )


def cold_steps(sampler: str, steps: int | None, levels: int) -> int | None:
    """The steps to pass to `ddpm.sample`: none for direct restoration, at most the levels otherwise."""
    return None if sampler == "cold_direct" or steps is None else min(int(steps), levels)


def generate_batch(
    model: Callable[..., Tensor], parts: ColdParts, shape: tuple[int, ...], gens: list[torch.Generator], *,
    device: torch.device, sample_options: dict[str, Any],
) -> Tensor:
    """x0 of one batch `shape` generated from the start prior (image i from generator i)."""
    from .. import sample

    if parts.prior is None:
        raise ValueError("this cold model file has no start prior (diffusion.start): it can only restore")
    bound, x_T = start(parts.degradation, parts.prior, shape, generator=gens, device=device)
    return sample(model, x_T, degradation=bound, generator=gens, **sample_options)


def restore_batch(
    model: Callable[..., Tensor], parts: ColdParts, x_t: Tensor, level: int, gens: list[torch.Generator], *,
    sample_options: dict[str, Any],
) -> Tensor:
    """x0 of degraded images x_t `[B, C, H, W]` at `level` (the degradation's random parts from `gens`)."""
    from .. import sample

    bound = bind(parts.degradation, x_t, generator=gens)
    return sample(model, x_t, degradation=bound, start_level=level, generator=gens, **sample_options)
