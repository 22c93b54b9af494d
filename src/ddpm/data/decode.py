"""Reading one image file safely and turning any PIL mode into grey or RGB floats in [0, 1].

What each mode becomes (`to_unit`):

| PIL mode                     | result                                                                  |
| ---------------------------- | ----------------------------------------------------------------------- |
| 1, L                         | grey, L / 255 (1 -> 0 or 1)                                              |
| I;16, I;16L, I;16B, I;16N    | grey, v / 65535: the full 16-bit range, so 65535 -> 1.0 (never clipped) |
| I (32-bit int)               | grey, v / 65535 when all values lie in [0, 65535] (how 16-bit files     |
|                              | usually arrive), else scaled by the image's own min..max               |
| F (32-bit float)             | grey, kept when all values lie in [0, 1], else scaled by its min..max   |
| LA, La, PA, RGBA, RGBa, and  | composited over a white background: c * alpha + (1 - alpha), so        |
| P or L/RGB with transparency | fully transparent pixels become white                                    |
| P                            | the palette colours; grey when every palette colour used has R = G = B |
| RGB                          | RGB / 255                                                                |
| CMYK, YCbCr, LAB, HSV, ...   | PIL's conversion to RGB                                                   |

The EXIF orientation tag is applied first (`ImageOps.exif_transpose`), so a phone photo stored
sideways comes out upright. 16-bit RGB files are read by PIL as 8-bit RGB; nothing finer survives.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS", "BadImageError", "open_image", "to_unit", "read_image", "read_rgb8", "is_grey_mode",
]  # fmt: skip

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip

_GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


class BadImageError(ValueError):
    """A file that cannot be used as an image; `reason` is a short category for reports."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Leading bytes of the formats in IMAGE_EXTENSIONS (WebP is checked separately: RIFF....WEBP).
_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
    b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"Pf", b"PF",
)  # fmt: skip


def _has_image_signature(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def open_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Image.Image:
    """Open an image lazily (header only), refusing empty files, non-images and decompression bombs.

    `max_pixels` (default: PIL's `Image.MAX_IMAGE_PIXELS`, about 89 M) bounds width x height; a larger
    declared size is treated as a decompression bomb before any pixel is decoded.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise BadImageError("unreadable", f"{p}: {e}") from e
    if size == 0:
        raise BadImageError("empty file", str(p))
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we apply our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
    except Image.DecompressionBombError as e:
        raise BadImageError("decompression bomb", f"{p}: {e}") from e
    except UnidentifiedImageError as e:
        # PIL cannot tell a damaged image from a non-image; the file's magic number can.
        reason = "corrupt" if _has_image_signature(p) else "not an image"
        raise BadImageError(reason, str(p)) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImageError("corrupt", f"{p}: {e}") from e
    w, h = im.size
    if limit is not None and w * h > limit:
        im.close()
        raise BadImageError("decompression bomb", f"{p}: {w}x{h} = {w * h} pixels is over the limit {limit}")
    if w < 1 or h < 1:
        im.close()
        raise BadImageError("corrupt", f"{p}: size {w}x{h}")
    return im


def verify_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> tuple[int, int]:
    """Header and structure check (PIL `verify`) without decoding pixels; returns (width, height)."""
    im = open_image(path, max_pixels=max_pixels)
    try:
        im.verify()
    except Exception as e:  # noqa: BLE001  (PIL raises many types for broken files)
        raise BadImageError("corrupt", f"{path}: {e}") from e
    finally:
        im.close()
    return im.size


def is_grey_mode(mode: str) -> bool:
    """Whether a PIL mode holds one intensity channel (with or without alpha)."""
    return mode in _GREY_MODES


def _scaled(a: np.ndarray, lo_ok: float, hi_ok: float, type_max: float) -> np.ndarray:
    """Values in [lo_ok, hi_ok] are divided by `type_max`; anything else is scaled by its own min..max."""
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise BadImageError("unsupported values", "image holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo >= lo_ok and hi <= hi_ok:
        return a / type_max
    if hi == lo:
        return np.full_like(a, 0.5)
    return (a - lo) / (hi - lo)


def _composite_on_white(a: np.ndarray) -> np.ndarray:
    """`[H, W, C + 1]` uint8 with alpha last -> `[H, W, C]` float over white."""
    a = a.astype(np.float64) / 255.0
    colour, alpha = a[..., :-1], a[..., -1:]
    return colour * alpha + (1.0 - alpha)


def to_unit(im: Image.Image) -> Tensor:
    """Any PIL image -> float32 `[C, H, W]` in [0, 1] with C = 1 (grey) or 3 (RGB); see the module table."""
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode == "P" or mode == "PA":
        rgba = "transparency" in im.info or mode == "PA"
        if rgba:
            out = _composite_on_white(np.asarray(im.convert("RGBA")))
        else:
            out = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        if np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2]):
            out = out[..., :1]
    elif mode in ("L", "RGB") and "transparency" in im.info:
        out = _composite_on_white(np.asarray(im.convert("LA" if mode == "L" else "RGBA")))
    elif mode == "1":
        out = np.asarray(im, dtype=np.float64)[..., None]
    elif mode == "L":
        out = np.asarray(im, dtype=np.float64)[..., None] / 255.0
    elif mode.startswith("I;16"):
        out = np.asarray(im).astype(np.float64)[..., None] / 65535.0
    elif mode == "I":
        out = _scaled(np.asarray(im), 0, 65535, 65535.0)[..., None]
    elif mode == "F":
        out = _scaled(np.asarray(im), 0.0, 1.0, 1.0)[..., None]
    elif mode in ("LA", "La"):
        out = _composite_on_white(np.asarray(im.convert("LA")))
    elif mode in ("RGBA", "RGBa"):
        out = _composite_on_white(np.asarray(im.convert("RGBA")))
    elif mode == "RGB":
        out = np.asarray(im, dtype=np.float64) / 255.0
    else:
        try:
            out = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        except (ValueError, OSError) as e:
            raise BadImageError("unsupported mode", f"no conversion of PIL mode {mode!r} to RGB ({e})") from e
    if out.ndim != 3 or out.shape[-1] not in (1, 3):
        raise BadImageError("unsupported mode", f"PIL mode {mode!r} gave an array of shape {out.shape}")
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32))


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = None, min_side: int | None = None
) -> Tensor:
    """Decode a file fully to float32 `[C, H, W]` in [0, 1] (C = 1 or 3); raises BadImageError.

    `min_side` lets JPEG decoding shrink by a power of two (DCT scaling, `Image.draft`) while both
    sides stay at least `min_side`, which makes large photos much cheaper to read.
    """
    im = open_image(path, max_pixels=max_pixels)
    try:
        with im:
            if min_side is not None and im.format == "JPEG":
                im.draft(None, (min_side, min_side))
            im.load()
            return to_unit(im)
    except BadImageError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (decoders and EXIF parsing raise many types on damaged files)
        raise BadImageError("corrupt", f"{path}: {type(e).__name__}: {e}") from e


def read_rgb8(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Tensor:
    """Decode a file to uint8 RGB `[3, H, W]` exactly as the FID tools do (pytorch-fid, torch-fidelity):
    PIL's `convert("RGB")`, so no EXIF rotation, alpha dropped rather than composited, grey repeated.

    FID values are compared across papers, so its images are read the way the reference code reads them,
    not with `to_unit`'s rules; the safety checks of `open_image` still apply. Raises BadImageError.
    """
    im = open_image(path, max_pixels=max_pixels)
    try:
        with im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001  (decoders raise many types on damaged files)
        raise BadImageError("corrupt", f"{path}: {type(e).__name__}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
