"""ddpm.pipelines: inference entry points that glue a model file to a sampler. The CLI and the web server
call these only.

- `PixelPipeline`: unconditional, class- and text-conditional pixel models (run folders, `ddpm export` files);
- `StableDiffusion`: SD 1.x checkpoints (single files or diffusers folders): txt2img, img2img, inpaint;
- `StableDiffusionUpscale`: the SD x4 upscaler (a diffusers folder): `upscale(image, prompt=…)`;
- `Cascade`: a base pixel model and super-resolution stages sampled in a chain (`StageOptions` per stage);
- `SamplingOptions`: sampler, steps, grid, guidance and seed, shared by both and by the CLI.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .options import SamplingOptions
from .pixel import PixelPipeline

_LAZY = {
    "Cascade": "cascade",
    "StageOptions": "cascade",
    "CascadeResult": "cascade",
    "StableDiffusion": "stable_diffusion",
    "SDResult": "stable_diffusion",
    "StableDiffusionUpscale": "sd_upscale",
}
__all__ = ["PixelPipeline", "SamplingOptions", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ddpm.pipelines' has no attribute {name!r}")
