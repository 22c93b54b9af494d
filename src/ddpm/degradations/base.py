"""The degradation protocol of cold diffusion (Bansal et al. 2022, "Cold Diffusion", Sec. 3) and its checks.

A degradation is any object with

- `levels`: T, an int >= 1, the number of degradation levels;
- `__call__(x0, t)`: D(x0, t), x0 `[B, C, H, W]`, t an int or a LongTensor `[B]` with 0 <= t <= T, the same
  shape, device and dtype back; D(x0, 0) = x0; deterministic (the same (x0, t) always gives the same
  output); differentiable in x0.

Two optional members let a degradation have random parts and still be deterministic per call:

- `bind(like, *, generator)`: the same degradation with its random parts (Gaussian's noise, Mask's random
  centres) drawn for one batch shaped like `like`, row i from generator i (`ddpm.noise`); training calls it
  once per batch, generation once per image seed.
- `with_estimate(*, x_t, x0, t)`: the degradation that maps the estimate x0 to x_t at level t (Gaussian:
  the noise re-estimated from x_t and x0, which makes cold sampling with it DDIM); the cold samplers call it
  at every step when present.

Subclassing `Degradation` is optional: it checks the level argument once and hands `degrade` a LongTensor.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..noise import Generators

__all__ = ["Degradation", "level_tensor", "check_degradation", "bind"]


def level_tensor(
    t: int | Tensor, levels: int, batch: int, device: torch.device | str | None = None
) -> Tensor:
    """The level argument `t` (an int, or a LongTensor `[B]` or `[]`) as a LongTensor `[batch]` on `device`,
    after checking that every level lies in 0 … `levels`."""
    if isinstance(t, bool) or not isinstance(t, (int, Tensor)):
        raise ValueError(f"the level t must be an int or a LongTensor [B], got {type(t).__name__}")
    if isinstance(t, Tensor):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"the level t must be an integer tensor (torch.long), got dtype {t.dtype}")
        if t.ndim > 1 or (t.ndim == 1 and t.numel() not in (1, batch)):
            raise ValueError(
                f"the level t must be a LongTensor [B] with B = {batch} (one level per image), "
                f"got shape {tuple(t.shape)}"
            )
        low, high = (int(t.min()), int(t.max())) if t.numel() else (0, 0)
        t = t.to(device=device, dtype=torch.long).reshape(-1).expand(batch)
    else:
        low = high = t
        t = torch.full((batch,), t, dtype=torch.long, device=device)
    if low < 0 or high > levels:
        bad = low if low < 0 else high
        raise ValueError(
            f"level t = {bad} is outside 0 … {levels} (T = {levels} levels of this degradation); "
            "t = 0 is the clean image, t = T the fully degraded one"
        )
    return t


class Degradation:
    """Base of the built-in degradations: `__call__` checks (x0, t), then `degrade(x0, t)` does the work.

    Subclasses set `name` (their key in `ddpm.degradations.DEGRADATIONS`), `levels`, and return their
    constructor's keywords from `options()` so that `make_degradation(name, **options)` rebuilds them.
    """

    name: ClassVar[str] = ""
    levels: int

    def __call__(self, x0: Tensor, t: int | Tensor) -> Tensor:
        """D(x0, t) for x0 `[B, C, H, W]` and t an int or LongTensor `[B]` in 0 … T."""
        if not isinstance(x0, Tensor) or x0.ndim != 4 or not x0.is_floating_point():
            shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
            raise ValueError(f"x0 must be a floating-point image batch [B, C, H, W], got {shape}")
        return self.degrade(x0, level_tensor(t, self.levels, x0.shape[0], x0.device))

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        """D(x0, t) for a checked LongTensor t `[B]` on x0's device."""
        raise NotImplementedError(f"{type(self).__name__} must implement degrade(x0, t)")

    def options(self) -> dict[str, Any]:
        """The constructor keywords that rebuild this degradation (plain JSON values)."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def check_degradation(degradation: Any, like: Tensor | None = None) -> int:
    """Check that `degradation` follows the protocol; return its T. With an image batch `like` `[B, C, H,
    W]`, also check that D(like, 0) returns `like` (level 0 must be the clean image)."""
    name = type(degradation).__name__
    levels = getattr(degradation, "levels", None)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(
            f"a degradation needs `levels`, the number of levels T (an int >= 1); {name} has {levels!r}"
        )
    if not callable(degradation):
        raise ValueError(f"a degradation must be callable as D(x0, t); {name} is not")
    if like is None:
        return levels
    out = degradation(like, 0)
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(like.shape):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name}(x0, t) must return a tensor shaped like x0 {tuple(like.shape)}, got {got}")
    scale = float(like.detach().abs().max()) if like.numel() else 0.0
    err = float((out.detach() - like.detach()).abs().max()) if like.numel() else 0.0
    if not err <= 1e-5 * max(1.0, scale):  # also catches NaN
        raise ValueError(
            f"{name}(x0, 0) is not x0 (max |D(x0, 0) - x0| = {err:.3g}): level 0 must be the clean image; "
            "make D return x0 unchanged where t == 0 (levels run 1 … T for the degraded images)"
        )
    return levels


def bind(degradation: Any, like: Tensor, *, generator: Generators = None) -> Any:
    """`degradation.bind(like, generator=...)` when it has random parts, else the degradation itself."""
    draw = getattr(degradation, "bind", None)
    return degradation if draw is None else draw(like, generator=generator)
