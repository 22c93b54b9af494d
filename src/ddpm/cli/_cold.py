"""Helpers of the cold-diffusion commands (`ddpm data degrade`, `ddpm restore`): reading a folder of images,
the degradation of a name and options, and image i's generator for a degradation's random parts."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["parse_options", "read_images", "image_generators", "strip_levels"]


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """`["levels=40", "schedule=constant"]` -> {"levels": 40, "schedule": "constant"} (TOML literals, else
    plain strings)."""
    options: dict[str, Any] = {}
    for text in pairs or []:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--option {text!r} must look like KEY=VALUE, e.g. levels=40")
        try:
            options[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = raw.strip()
    return options


def read_images(path: str, *, size: int | None, channels: int | None) -> tuple[list[str], Any]:
    """The images of a folder (sorted names, not recursive) or one file, as `[N, C, H, W]` in [-1, 1]; all
    images must share one size unless `size` squares them (resize the shorter side, centre crop)."""
    import torch

    from ..data.decode import IMAGE_EXTENSIONS, read_image
    from ..data.transforms import fit_square, match_channels, to_signed

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such image or folder: {path!r}")
    files = [root] if root.is_file() else sorted(
        p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )  # fmt: skip
    if not files:
        raise ValueError(f"{path!r} holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}, …)")
    pixels = [read_image(p) for p in files]
    c = channels or (1 if all(x.shape[0] == 1 for x in pixels) else 3)
    pixels = [match_channels(x, c) for x in pixels]
    if size is not None:
        pixels = [fit_square(x, size) for x in pixels]
    shapes = {tuple(x.shape) for x in pixels}
    if len(shapes) > 1:
        raise ValueError(f"the images have different sizes {sorted(shapes)}; pass --size to square them")
    return [p.stem for p in files], to_signed(torch.stack(pixels))


def image_generators(seed: int, count: int) -> list[Any]:
    """One CPU generator per image, image i seeded `seed + i` (its random mask centre or noise)."""
    import torch

    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def strip_levels(levels: int, columns: int = 11) -> list[int]:
    """Up to `columns` levels from 0 to T, evenly spread, both ends included."""
    n = min(columns, levels + 1)
    return sorted({round(i * levels / (n - 1)) for i in range(n)})
