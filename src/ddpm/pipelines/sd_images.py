"""Images and masks into the Stable Diffusion pipeline: any mode and size in, `[1, C, H, W]` tensors out.

| input                         | read as                                                           |
| ----------------------------- | ----------------------------------------------------------------- |
| path, PIL image               | `ddpm.data.decode`, as training reads it: EXIF rotation, any mode  |
|                               | (RGBA, palette, greyscale, 16-bit) -> RGB, alpha over white          |
| uint8 array `[H, W(, C)]`     | pixel values 0 … 255                                              |
| float tensor `[(1,) C, H, W]` | the project's convention: values in [-1, 1]                        |
| mask: any of the above        | greyscale; white (>= 0.5) = repaint, black = keep (as the web UIs) |

Images are resized (Lanczos) to the requested size, masks too (then thresholded at one half).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..data.decode import BadImageError, open_image, to_unit

__all__ = ["ImageInput", "check_size", "round_size", "image_tensor", "mask_tensor", "image_size", "to_pil"]

ImageInput = Any  # str | Path | PIL.Image.Image | np.ndarray | Tensor


def check_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) if both are positive multiples of `multiple`; else a ValueError naming the fix."""
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {v!r}")
        if v % multiple:
            lo, hi = max(multiple, v // multiple * multiple), (v // multiple + 1) * multiple
            raise ValueError(
                f"{name}={v} is not a multiple of {multiple} (what this model's autoencoder and UNet need); "
                f"use {lo} or {hi}"
            )
    return int(height), int(width)


def round_size(height: int, width: int, multiple: int, *, what: str = "image") -> tuple[int, int]:
    """(height, width) rounded to the nearest multiples of `multiple` (at least one); a warning if changed."""
    h = max(multiple, int(round(height / multiple)) * multiple)
    w = max(multiple, int(round(width / multiple)) * multiple)
    if (h, w) != (height, width):
        warnings.warn(
            f"the {what} is {width}x{height}, not a multiple of {multiple}; generating at {w}x{h} "
            "(pass width/height to choose)",
            stacklevel=3,
        )
    return h, w


def to_pil(image: ImageInput, *, what: str = "image") -> Image.Image:
    """Any supported input as an upright PIL image (EXIF orientation applied; files read fully and closed)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no such {what} file: {str(path)!r}")
        try:
            with open_image(path) as im:
                im.load()
                return ImageOps.exif_transpose(im)
        except (BadImageError, OSError) as e:
            if getattr(e, "reason", "") == "decompression bomb":  # refused before decoding; say what to do
                raise ValueError(f"{str(path)!r} is too large to read as an {what} ({e}); shrink it to a "
                                 "few thousand pixels a side (the model works at about 512)") from e
            raise ValueError(f"cannot read {str(path)!r} as an {what}: {e}") from e
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image)
    if isinstance(image, Tensor):
        x = image.detach().float().cpu()
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"an {what} tensor must be [C, H, W] or [1, C, H, W] with 1, 3 or 4 channels; "
                f"got {tuple(image.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"the {what} tensor holds NaN or inf values")
        arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(0, -1).numpy()
        return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"an {what} array must be uint8 [H, W] or [H, W, C]; got {image.dtype} {image.shape}"
            )
        return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    raise ValueError(
        f"unsupported {what} type {type(image).__name__}; give a path, PIL image, uint8 array or tensor"
    )


def _rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of any mode, decoded as training decodes it (`ddpm.data.decode.to_unit`)."""
    try:
        x = to_unit(im).expand(3, -1, -1)
    except BadImageError as e:
        raise ValueError(f"cannot use this image: {e}") from e
    return Image.fromarray((x * 255.0).round().to(torch.uint8).movedim(0, -1).numpy())


def image_size(image: ImageInput) -> tuple[int, int]:
    """(height, width) of an image input."""
    im = to_pil(image)
    return im.height, im.width


def image_tensor(image: ImageInput, height: int, width: int) -> Tensor:
    """`[1, 3, height, width]` float32 in [-1, 1] from any supported image (resized when its size differs)."""
    im = _rgb(to_pil(image))
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr * 2.0 - 1.0).movedim(-1, 0)[None].contiguous()


def mask_tensor(mask: ImageInput, height: int, width: int) -> Tensor:
    """`[1, 1, height, width]` float32 of 0 (keep) and 1 (repaint) from any supported mask input."""
    if isinstance(mask, Tensor):
        m = mask.detach().float().cpu()
        while m.ndim > 2 and m.shape[0] == 1:
            m = m[0]
        if m.ndim != 2:
            raise ValueError(
                f"a mask tensor must be [H, W], [1, H, W] or [1, 1, H, W]; got {tuple(mask.shape)}"
            )
        if not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
            raise ValueError("a mask tensor must hold values in [0, 1] (1 = repaint)")
        im = Image.fromarray((m.numpy() * 255.0 + 0.5).astype(np.uint8))
    else:
        im = to_pil(mask, what="mask")
        im = _rgb(im).convert("L")
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy((arr >= 0.5).astype(np.float32))[None, None]
