"""`SamplingOptions`: how to sample, shared by the pixel and Stable Diffusion pipelines and the CLI.

A field left None takes the model's default: a pixel model file's `[sample]` settings, or SD 1.x's table
(`ddpm.config.choices.SD_DEFAULTS`). Names are checked against `ddpm.config.choices` on construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..config.choices import SAMPLER_NAMES, SPACINGS

__all__ = ["SamplingOptions", "CLIP_X0", "resolve_device", "image_metadata", "UNetPlacement"]

CLIP_X0 = ("static", "dynamic", "none")  # "none": no clipping of x0_hat
SEED_LIMIT = 2**63 - 1


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _whole(value: Any, name: str, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """Sampler, steps, grid, guidance and noise of one call; None = the model's default."""

    sampler: str | None = None
    steps: int | None = None
    spacing: str | None = None
    karras: bool = False
    exponential: bool = False
    guidance_scale: float | None = None
    eta: float = 0.0
    seed: int | None = None
    clip_x0: str | None = None
    clip_skip: int | None = None

    def __post_init__(self) -> None:
        for name, names in (("sampler", SAMPLER_NAMES), ("spacing", SPACINGS), ("clip_x0", CLIP_X0)):
            value = getattr(self, name)
            if value is not None and value not in names:
                raise ValueError(f"unknown {name} {value!r}; choose one of {list(names)}")
        _whole(self.steps, "steps", 1)
        _whole(self.seed, "seed", 0)
        _whole(self.clip_skip, "clip_skip", 0)
        if self.seed is not None and self.seed > SEED_LIMIT:
            raise ValueError(f"seed must be at most 2^63 - 1, got {self.seed}")
        for name in ("karras", "exponential"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.karras and self.exponential:
            raise ValueError("karras and exponential are two sigma schedules; choose one of them")
        for name in ("guidance_scale", "eta"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")

    def replace(self, **changes: Any) -> SamplingOptions:
        """A copy with `changes` applied (and checked)."""
        return dataclasses.replace(self, **changes)


def image_metadata(o: SamplingOptions, num: int, **fields: Any) -> list[dict[str, Any]]:
    """One metadata dict per image of a call with complete options `o`: `fields`, how it was sampled and
    its seed (image i: seed + i); the dict a PNG carries and a call regenerates the image from."""
    base = {**fields, "sampler": o.sampler, "steps": o.steps, "spacing": o.spacing, "karras": o.karras,
            "exponential": o.exponential,
            "eta": float(o.eta), "guidance_scale": o.guidance_scale}
    return [{**base, "seed": int(o.seed or 0) + i} for i in range(num)]


class UNetPlacement:
    """`device` and `dtype` of a pipeline, read off its `unet`'s parameters (where it runs, in what)."""

    unet: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype
