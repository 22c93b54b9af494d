"""Images in and out: [-1, 1] tensors to uint8, sample grids, PNGs with reproduction metadata.

Every PNG the project writes carries two text chunks:
- "parameters": the A1111-style summary other tools read,
  "prompt\\nNegative prompt: …\\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 2, Seed: 7, Size: 16x16,
  Model hash: …" (one line after the prompts);
- "ddpm": the full JSON of the generation settings (exact sampler names, spacing, eta, class label, …).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

from .atomic import atomic_write

__all__ = [
    "to_uint8",
    "make_grid",
    "save_png",
    "save_generated",
    "read_png_metadata",
    "format_parameters",
    "png_metadata",
    "SAMPLER_DISPLAY_NAMES",
]

# Our sampler names -> the names the popular web UIs print (used in the "parameters" chunk only).
SAMPLER_DISPLAY_NAMES = {
    "ddpm": "DDPM",
    "ddim": "DDIM",
    "plms": "PLMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_3m": "DPM++ 3M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "unipc": "UniPC",
    "unipc_3": "UniPC",  # A1111 sets UniPC's order in its settings, not in the name
    "lms": "LMS",
}


def to_uint8(images: Tensor) -> Tensor:
    """Float `[C, H, W]` / `[N, C, H, W]` in [-1, 1] -> uint8 channels-last `[H, W, C]` / `[N, H, W, C]`.

    x -> round((x + 1) * 127.5), clamped to 0 … 255; NaNs read as 0.0 (mid-grey).
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"to_uint8 expects a torch.Tensor, got {type(images).__name__}")
    if images.ndim not in (3, 4):
        raise ValueError(f"to_uint8 expects [C, H, W] or [N, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        raise ValueError("images are already uint8; to_uint8 converts float images in [-1, 1]")
    x = images.detach().float().cpu().nan_to_num(0.0)
    x = ((x + 1) * 127.5).round().clamp_(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).contiguous()


def make_grid(images: Tensor, nrow: int = 8, *, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile `[N, C, H, W]` into one image `[C, H', W']`, `nrow` images per row (the last row may be short).

    The grid keeps the input's value range; `pad_value` (default 1.0, white for [-1, 1] data) fills the gaps.
    """
    if images.ndim != 4:
        raise ValueError(f"make_grid expects [N, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("make_grid needs at least one image")
    if int(nrow) != nrow or nrow < 1:
        raise ValueError(f"nrow (images per row) must be a positive integer, got {nrow!r}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    cols = min(int(nrow), n)
    rows = math.ceil(n / cols)
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid


def _to_pil(image: Tensor | np.ndarray) -> Image.Image:
    if isinstance(image, Tensor) and image.dtype != torch.uint8:
        if image.ndim != 3:
            raise ValueError(f"save_png expects one image [C, H, W], got shape {tuple(image.shape)}")
        arr = to_uint8(image).numpy()
    else:
        arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"array images must be uint8 [H, W] or [H, W, C], got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return Image.fromarray(arr, mode="RGB" if arr.shape[-1] == 3 else "RGBA")
    raise ValueError(f"cannot save an image of shape {arr.shape}; need 1, 3 or 4 channels")


def save_png(path: str | Path, image: Tensor | np.ndarray, metadata: Mapping[str, str] | None = None) -> Path:
    """Write one image (float `[C, H, W]` in [-1, 1], or uint8 `[H, W(, C)]`) as PNG with tEXt `metadata`.

    The file appears atomically (written beside, then renamed), so a reader never sees half a PNG.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_png writes .png files, got {str(path)!r}")
    pil = _to_pil(image)
    info = PngInfo()
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not k or len(k) > 79:
            raise ValueError(f"PNG text keys must be 1-79 character strings, got {k!r}")
        if not isinstance(v, str):
            v = json.dumps(v, sort_keys=True)
        # iTXt keeps any unicode (prompts); Pillow reads it back like tEXt.
        if v.isascii():
            info.add_text(k, v)
        else:
            info.add_itxt(k, v)
    with atomic_write(path) as tmp:
        pil.save(tmp, format="PNG", pnginfo=info)
    return path


def save_generated(
    folder: str | Path,
    images: Tensor,
    metadata: list[dict[str, Any]],
    *,
    start: int = 0,
    name: str = "{index:05d}-seed{seed}.png",
    grid_nrow: int | None = None,
) -> tuple[list[Path], Path | None]:
    """Write generated images as PNGs named by `name` (index from `start`, seed) with their metadata, and
    a `grid.png` of them `grid_nrow` per row when given; returns (image paths, grid path or None)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [save_png(folder / name.format(index=start + i, seed=m["seed"]), image, png_metadata(m))
             for i, (image, m) in enumerate(zip(images, metadata))]
    if grid_nrow is None:
        return paths, None
    seeds = f"{len(metadata)} images, seeds {metadata[0]['seed']}-{metadata[-1]['seed']}"
    grid_meta = dict(metadata[0], grid=seeds, nrow=grid_nrow)
    return paths, save_png(folder / "grid.png", make_grid(images, grid_nrow), png_metadata(grid_meta))


def read_png_metadata(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG as `{key: text}` (the inverse of `save_png`'s `metadata`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such PNG: {str(path)!r}")
    with Image.open(path) as im:
        im.load()
        text = getattr(im, "text", None) or {}
        return {str(k): str(v) for k, v in text.items()}


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if any(ch in text for ch in ",:\n") else text


def format_parameters(meta: Mapping[str, Any]) -> str:
    """The A1111-style "parameters" text for one generated image's metadata dict.

    Reads the keys `prompt`, `negative_prompt`, `steps`, `sampler`, `karras`, `exponential`, `guidance_scale`,
    `seed`, `width`, `height`, `model_hash`, `model`, `strength` (img2img/inpaint: "Denoising strength") and
    `clip_skip` (ours counts skipped layers; the web UIs' "Clip skip" counts from 1, so it is ours + 1);
    further keys stay in the "ddpm" JSON chunk only.
    """
    lines = [str(meta.get("prompt") or "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    fields: list[tuple[str, Any]] = []
    if meta.get("steps") is not None:
        fields.append(("Steps", meta["steps"]))
    if meta.get("sampler"):
        name = SAMPLER_DISPLAY_NAMES.get(meta["sampler"], meta["sampler"])
        suffix = " Karras" if meta.get("karras") else " Exponential" if meta.get("exponential") else ""
        fields.append(("Sampler", name + suffix))
    if meta.get("guidance_scale") is not None:
        fields.append(("CFG scale", _number(meta["guidance_scale"])))
    if meta.get("seed") is not None:
        fields.append(("Seed", meta["seed"]))
    if meta.get("width") and meta.get("height"):
        fields.append(("Size", f"{meta['width']}x{meta['height']}"))
    if meta.get("model_hash"):
        fields.append(("Model hash", meta["model_hash"]))
    if meta.get("model"):
        fields.append(("Model", meta["model"]))
    if meta.get("strength") is not None:
        fields.append(("Denoising strength", _number(meta["strength"])))
    if meta.get("clip_skip"):
        fields.append(("Clip skip", int(meta["clip_skip"]) + 1))
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)


def _number(x: Any) -> Any:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def png_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """The two PNG text chunks for one image: {"parameters": A1111 text, "ddpm": full JSON}."""
    return {"parameters": format_parameters(meta), "ddpm": json.dumps(dict(meta), sort_keys=True)}
