"""Images as CLIP's image tower reads them: the recipe of transformers' `CLIPImageProcessor` (and of
OpenAI's `clip.load` preprocess), written for PIL images and `[-1, 1]` tensors.

1. RGB (any PIL mode through `decode.to_unit`'s rules is the caller's; here: `convert("RGB")`);
2. resize so the shorter side is `size` (224), the longer one int(size * long / short), PIL bicubic;
3. center crop `crop` x `crop` at top = (H - crop) // 2, left = (W - crop) // 2;
4. x / 255, then (x - mean) / std per channel with OpenAI's CLIP mean and std.

The result is `pixel_values [B, 3, crop, crop]` float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["CLIP_MEAN", "CLIP_STD", "clip_preprocess", "tensor_to_pil"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side `size` and the aspect ratio kept (the longer side truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def _one(image: Image.Image, size: int, crop: int) -> np.ndarray:
    image = image.convert("RGB")
    w, h = _resized_size(image.width, image.height, size)
    if (w, h) != image.size:
        image = image.resize((w, h), resample=Image.Resampling.BICUBIC)
    a = np.asarray(image)
    top, left = (h - crop) // 2, (w - crop) // 2
    a = a[top:top + crop, left:left + crop]
    x = (a.astype(np.float64) / 255.0).astype(np.float32)
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return x.transpose(2, 0, 1)


def clip_preprocess(images: Sequence[Image.Image], *, size: int = 224, crop: int = 224) -> Tensor:
    """`pixel_values [B, 3, crop, crop]` of PIL `images`, exactly as `CLIPImageProcessor` makes them."""
    if crop > size:
        raise ValueError(f"crop={crop} is larger than the resized shorter side size={size}")
    if not images:
        raise ValueError("clip_preprocess needs at least one image")
    return torch.from_numpy(np.stack([_one(im, size, crop) for im in images]))


def tensor_to_pil(images: Tensor) -> list[Image.Image]:
    """`[B, C, H, W]` images in [-1, 1] -> RGB PIL images, rounded to 8 bits as a saved PNG would be."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return [Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB") for a in x]
