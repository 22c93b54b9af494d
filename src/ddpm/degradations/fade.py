"""Fading towards a constant: D(x0, t) = (1 - t / T) x0 + (t / T) target, a linear path to a flat image."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import Degradation

__all__ = ["Fade"]


class Fade(Degradation):
    """D(x0, t) = (1 - a_t) x0 + a_t target with a_t = t / T, for x0 `[B, C, H, W]`; at T every image is the
    constant `target` (0: mid-grey for images in [-1, 1])."""

    name = "fade"

    def __init__(self, *, levels: int = 20, target: float = 0.0) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"Fade levels must be an int >= 1, got {levels!r}")
        self.levels, self.target = levels, float(target)

    def options(self) -> dict[str, Any]:
        return {"levels": self.levels, "target": self.target}

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        a = (t.to(x0.dtype) / self.levels).view(-1, 1, 1, 1)
        return x0 * (1 - a) + self.target * a
