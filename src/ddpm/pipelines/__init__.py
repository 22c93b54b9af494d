"""ddpm.pipelines: inference entry points that glue a model file to a sampler. The CLI and the web server
call these only.

- `DiffusionPipeline`: unconditional and class-conditional pixel models (run folders, `ddpm export` files);
- `TextToImagePipeline`: text-conditional pixel models trained with `data.condition = "text"`;
- `StableDiffusion`: SD 1.x checkpoints (single files or diffusers folders): txt2img, img2img, inpaint.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .pixel import DiffusionPipeline

_LAZY = {
    "TextToImagePipeline": "text",
    "StableDiffusion": "stable_diffusion",
    "SDResult": "stable_diffusion",
}
__all__ = ["DiffusionPipeline", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ddpm.pipelines' has no attribute {name!r}")
