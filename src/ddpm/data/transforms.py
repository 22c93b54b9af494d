"""Image transforms on tensors, written with plain torch (no torchvision).

Images are float tensors `[C, H, W]` or batches `[B, C, H, W]`. Decoders produce values in
[0, 1]; `to_signed` maps them to the [-1, 1] range the diffusion models are trained on
(DDPM, Ho et al. 2020, Sec. 3.3: "data scaled linearly to [-1, 1]").

Resizing is bilinear with an antialiasing (triangle) filter when shrinking, the same filter as PIL's
`Image.resize(..., BILINEAR)` (the tests check they agree to 1e-5). Its weights are
non-negative and sum to one, so every output pixel is a convex combination of input pixels:
the range of the input is kept without any clipping (unlike bicubic, which overshoots).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "resize",
    "resize_shorter_side",
    "center_crop",
    "fit_square",
    "hflip",
    "to_signed",
    "to_unit",
    "rgb_to_grey",
    "match_channels",
]

# ITU-R BT.601 luma weights, the ones PIL uses for RGB -> "L".
_LUMA = (0.299, 0.587, 0.114)


def _as_batch(x: Tensor) -> tuple[Tensor, bool]:
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"expected an image [C, H, W] or a batch [B, C, H, W], got shape {tuple(x.shape)}")


def resize(x: Tensor, size: tuple[int, int], *, antialias: bool = True) -> Tensor:
    """Bilinear resize of `[C, H, W]` or `[B, C, H, W]` to `size = (H', W')`, antialiased when shrinking."""
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize needs a positive size, got {size}")
    xb, squeeze = _as_batch(x)
    if tuple(xb.shape[-2:]) == (h, w):
        return x
    dtype = xb.dtype
    work = xb if dtype in (torch.float32, torch.float64) else xb.float()
    out = F.interpolate(work, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)
    out = out.to(dtype)
    return out.squeeze(0) if squeeze else out


def resize_shorter_side(x: Tensor, size: int, *, antialias: bool = True) -> Tensor:
    """Resize so the shorter side of `[..., H, W]` becomes `size`, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    if h <= w:
        new_h, new_w = size, max(size, round(w * size / h))
    else:
        new_h, new_w = max(size, round(h * size / w)), size
    return resize(x, (new_h, new_w), antialias=antialias)


def center_crop(x: Tensor, size: int) -> Tensor:
    """The central `size x size` window of `[..., H, W]` (both sides must be at least `size`)."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size}x{size} out of an image of {h}x{w}; resize it first")
    top = (h - size) // 2
    left = (w - size) // 2
    return x[..., top : top + size, left : left + size]


def fit_square(x: Tensor, size: int, *, antialias: bool = True) -> Tensor:
    """Resize the shorter side to `size`, then centre-crop to `[..., size, size]`."""
    if size < 1:
        raise ValueError(f"image_size must be a positive integer, got {size}")
    return center_crop(resize_shorter_side(x, size, antialias=antialias), size)


def hflip(x: Tensor) -> Tensor:
    """Mirror `[..., H, W]` left-right."""
    return x.flip(-1)


def to_signed(x: Tensor) -> Tensor:
    """Map [0, 1] to [-1, 1] (x -> 2x - 1)."""
    return x * 2.0 - 1.0


def to_unit(x: Tensor) -> Tensor:
    """Map [-1, 1] back to [0, 1] (x -> (x + 1) / 2)."""
    return (x + 1.0) * 0.5


def rgb_to_grey(x: Tensor) -> Tensor:
    """BT.601 luma of `[..., 3, H, W]` -> `[..., 1, H, W]`; grey input (R = G = B) is kept exact."""
    if x.shape[-3] != 3:
        raise ValueError(f"rgb_to_grey expects 3 channels, got {x.shape[-3]}")
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    if torch.equal(r, g) and torch.equal(g, b):
        return r.clone()
    y = _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b
    # The weights are positive and sum to one, so y lies between the smallest and largest channel of
    # its pixel up to float rounding; bounding it there removes only that rounding.
    return torch.minimum(torch.maximum(y, x.amin(-3, keepdim=True)), x.amax(-3, keepdim=True))


def match_channels(x: Tensor, channels: int) -> Tensor:
    """`[..., C, H, W]` in [0, 1], C in {1, 3}, to `channels` (grey is replicated, colour becomes luma)."""
    c = x.shape[-3]
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if c == channels:
        return x
    if c == 1:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).clone()
    if c == 3:
        return rgb_to_grey(x)
    raise ValueError(f"cannot convert an image with {c} channels; expected 1 or 3")
