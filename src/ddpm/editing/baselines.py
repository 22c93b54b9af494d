"""The two baselines Imagic is measured against, on the same `EditModel`, sampling settings and seed:

- `img2img` (SDEdit, Meng et al. 2022): x0 noised to the level `strength` of the way up the grid with the
  seed's noise, then sampled with the target text. Everything it re-noises may change.
- `inversion_edit`: x0 DDIM-inverted under the source prompt (`ddpm.invert`), then deterministic DDIM from
  that x_T with the target prompt (and guidance). With target = source it reconstructs the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..pipelines import SamplingOptions
from ..pipelines.sd_images import ImageInput
from .imagic import check_target
from .model import edit_model

__all__ = ["img2img", "inversion_edit"]


def _check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must lie in (0, 1] (1 = ignore the image), got {strength!r}")
    return float(strength)


@torch.no_grad()
def img2img(
    model: Any,
    image: ImageInput,
    target: str,
    *,
    strengths: Sequence[float] = (0.6,),
    options: SamplingOptions | None = None,
    progress: bool = False,
) -> Tensor:
    """SDEdit of `image` toward `target`, one image `[len(strengths), 3, H, W]` in [-1, 1] per strength."""
    m = edit_model(model)
    target = check_target(target)
    strengths = [_check_strength(s) for s in strengths]
    s = m.sampling(options)
    x0 = m.to_x0(m.pixels(image))
    e, null = m.embed(target), m.embed("")
    out = []
    for strength in strengths:
        noise = m.noise(tuple(x0.shape), s.seed)
        out.append(m.sample(e, null, s, start=noise, init=x0, strength=strength, progress=progress))
    return m.to_pixels(torch.cat(out))


@torch.no_grad()
def inversion_edit(
    model: Any,
    image: ImageInput,
    target: str,
    *,
    source_prompt: str,
    options: SamplingOptions | None = None,
    progress: bool = False,
) -> tuple[Tensor, float]:
    """`image` inverted under `source_prompt`, re-drawn with `target`: (image `[1, 3, H, W]`, the inversion's
    reconstruction RMSE in the model's space)."""
    m = edit_model(model)
    target = check_target(target)
    if not isinstance(source_prompt, str):
        raise ValueError("source_prompt must be a string describing the input image")
    s = m.ddim(m.sampling(options))
    x0 = m.to_x0(m.pixels(image))
    inv = m.invert(x0, m.embed(source_prompt), s, progress=progress)
    x = m.sample(m.embed(target), m.embed(""), s, start=inv.x_T, progress=progress)
    return m.to_pixels(x), float(inv.error[0])
