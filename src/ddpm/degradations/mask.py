"""Gaussian-mask inpainting (Bansal et al. 2022, Sec. 4.1): a mask that grows with the level.

Notation (distances and widths in pixels; `side` is the shorter image side):

| symbol   | code          | meaning                                                                     |
| -------- | ------------- | --------------------------------------------------------------------------- |
| c        | centre        | the mask centre (the image centre, or a seeded random point)                |
| beta_k   | `betas[k-1]`  | side * (beta_start + (beta_end - beta_start) (k - 1) / (T - 1)), k = 1 … T |
| z_k(p)   |               | 1 - exp(-|p - c|^2 / (2 beta_k^2)): what level k keeps of pixel p            |
| m_t      | `keep`        | z_1 … z_t (m_0 = 1)                                                         |
| D(x0, t) | `__call__`    | m_t x0 + (1 - m_t) fill                                                     |
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..noise import Generators, check_generators
from .base import Degradation

__all__ = ["Mask", "MASK_CENTRES"]

MASK_CENTRES = ("centre", "random")


class Mask(Degradation):
    """D(x0, t) = m_t x0 + (1 - m_t) fill for x0 `[B, C, H, W]`: the product of t Gaussian masks.

    levels: T; beta_start / beta_end: the first and last mask width as a fraction of the shorter image
    side (linear in between; the defaults mask the middle of a 16-32 px image and, at T, most of it);
    fill: the value masked pixels fade to (0: mid-grey for images in [-1, 1]); centre: `centre` (the image
    centre) or `random`, a point in the middle half of the image drawn from `seed`, the same for every call;
    `bind(like, generator=...)` draws one centre per image from per-image generators instead.
    """

    name = "mask"

    def __init__(
        self,
        *,
        levels: int = 20,
        beta_start: float = 0.05,
        beta_end: float = 0.3,
        fill: float = 0.0,
        centre: str = "centre",
        seed: int = 0,
    ) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"Mask levels must be an int >= 1, got {levels!r}")
        if not 0 < beta_start <= beta_end:
            raise ValueError(f"Mask needs 0 < beta_start <= beta_end, got {beta_start}, {beta_end}")
        if centre not in MASK_CENTRES:
            raise ValueError(f"unknown Mask centre {centre!r}; choose one of {list(MASK_CENTRES)}")
        self.levels, self.beta_start, self.beta_end = levels, float(beta_start), float(beta_end)
        self.fill, self.centre, self.seed = float(fill), centre, int(seed)
        step = (self.beta_end - self.beta_start) / max(levels - 1, 1)
        self.betas = [self.beta_start + step * k for k in range(levels)]
        self.centres: Tensor | None = None  # [B, 2] fractions of (H, W) once bound
        if centre == "random":
            self.centres = 0.25 + 0.5 * torch.rand((1, 2), generator=torch.Generator().manual_seed(self.seed))

    def options(self) -> dict[str, Any]:
        return {"levels": self.levels, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "fill": self.fill, "centre": self.centre, "seed": self.seed}  # fmt: skip

    def bind(self, like: Tensor, *, generator: Generators = None) -> Mask:
        """This mask with one random centre per image of `like` `[B, …]` (row i from generator i); a
        centred mask has no random part and comes back as it is."""
        if self.centre != "random":
            return self
        batch = like.shape[0]
        check_generators(generator, batch)
        if generator is None or isinstance(generator, torch.Generator):
            u = torch.rand((batch, 2), generator=generator)
        else:
            u = torch.stack([torch.rand(2, generator=g) for g in generator])
        bound = Mask(**self.options())
        bound.centres = 0.25 + 0.5 * u
        return bound

    def keep(self, t: Tensor, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """m_t `[B, 1, H, W]` for the levels t `[B]`."""
        batch = t.shape[0]
        if self.centres is None:
            centres = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
        elif self.centres.shape[0] in (1, batch):
            centres = self.centres.double()
        else:
            raise ValueError(
                f"this Mask was bound to a batch of {self.centres.shape[0]} images; call it on that batch "
                f"(got {batch}) or bind it again"
            )
        cy = centres[:, 0, None, None] * (height - 1)
        cx = centres[:, 1, None, None] * (width - 1)
        ys = torch.arange(height, dtype=torch.float64)[None, :, None]
        xs = torch.arange(width, dtype=torch.float64)[None, None, :]
        d2 = ((ys - cy) ** 2 + (xs - cx) ** 2).expand(batch, height, width)  # [B, H, W]
        side = min(height, width)
        betas = torch.tensor(self.betas, dtype=torch.float64) * side
        z = 1 - torch.exp(-d2[:, None] / (2 * betas[None, :, None, None] ** 2))  # [B, T, H, W]
        used = torch.arange(1, self.levels + 1)[None, :] <= t.cpu()[:, None]  # level k <= t
        m = torch.where(used[:, :, None, None], z, torch.ones_like(z)).prod(dim=1, keepdim=True)
        return m.to(device=device, dtype=dtype)

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        m = self.keep(t, x0.shape[-2], x0.shape[-1], x0.device, x0.dtype)
        return x0 * m + self.fill * (1 - m)
