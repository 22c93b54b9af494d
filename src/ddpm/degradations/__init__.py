"""Degradations for cold diffusion (Bansal et al. 2022, "Cold Diffusion: Inverting Arbitrary Image
Transforms Without Noise"): deterministic operators D(x0, t), t = 0 … T, that a restoration network
R(x_t, t) ≈ x0 learns to invert, sampled by `ddpm.sample(model, x_T, degradation=D, sampler="cold")`.

The protocol (`base.py`): any object with `levels` (T) and `__call__(x0, t)`; subclassing `Degradation`
is optional. Built in, by config name:

| name         | class        | D(x0, t)                                                          |
| ------------ | ------------ | ----------------------------------------------------------------- |
| `blur`       | `Blur`       | t successive Gaussian blurs (reflect padding)                      |
| `mask`       | `Mask`       | the product of t growing Gaussian masks, towards `fill`             |
| `downsample` | `Downsample` | area down by 2^t, nearest up by 2^t                                 |
| `fade`       | `Fade`       | (1 - t/T) x0 + (t/T) target                                         |
| `gaussian`   | `Gaussian`   | sqrt(ab_t) x0 + sqrt(1 - ab_t) eps: DDPM's forward process           |
"""

from __future__ import annotations

import inspect
from typing import Any

from ..config.choices import DEGRADATION_NAMES
from .base import Degradation, bind, check_degradation, level_tensor
from .blur import Blur
from .downsample import Downsample
from .fade import Fade
from .gaussian import Gaussian
from .mask import Mask
from .start import ChannelMeans, start

__all__ = [
    "Degradation",
    "Blur",
    "Mask",
    "Downsample",
    "Fade",
    "Gaussian",
    "DEGRADATIONS",
    "make_degradation",
    "degradation_config",
    "check_degradation",
    "level_tensor",
    "bind",
    "ChannelMeans",
    "start",
]

DEGRADATIONS: dict[str, type[Degradation]] = {
    "blur": Blur,
    "mask": Mask,
    "downsample": Downsample,
    "fade": Fade,
    "gaussian": Gaussian,
}
if tuple(DEGRADATIONS) != DEGRADATION_NAMES:  # the config layer validates names without importing torch
    raise RuntimeError("ddpm.config.choices.DEGRADATION_NAMES is out of step with DEGRADATIONS")


def make_degradation(name: str, **options: Any) -> Degradation:
    """The built-in degradation `name` with its keyword options, e.g. `make_degradation("blur", levels=40)`;
    an unknown name or option is an error that lists the valid ones."""
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose one of {list(DEGRADATIONS)}")
    cls = DEGRADATIONS[name]
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"degradation {name!r} takes the options {known}; got unknown {unknown}")
    return cls(**options)


def degradation_config(degradation: Degradation) -> dict[str, Any]:
    """`{"name": …, **options}` of a built-in degradation: what `make_degradation(**config)` rebuilds."""
    if not isinstance(degradation, Degradation) or degradation.name not in DEGRADATIONS:
        raise ValueError(
            f"only the built-in degradations {list(DEGRADATIONS)} can be written to a config or model file; "
            f"got {type(degradation).__name__}"
        )
    return {"name": degradation.name, **degradation.options()}
