"""A tiny random Stable Diffusion 1.x diffusers folder for the server tests and benchmarks: the one
tests/test_sd_pipeline.py compares against diffusers (a 2-level UNet with cross-attention, context 64; a
2-level VAE, factor 2; a 2-layer CLIP text model; every parameter random; CLIP's real tokenizer files).
The builders are that module's, imported, not copied. Needs diffusers and transformers (test-only).

(Moving the builders here and importing them into test_sd_pipeline.py made its batch-position test miss
its 1e-5 tolerance by 1.3e-7 with identical weights, so they stay there for now.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from test_sd_pipeline import SIZE, _components, _save_folder

__all__ = ["SIZE", "tiny_sd_folder", "shared_tiny_sd_folder"]


def tiny_sd_folder(root: Path) -> Path:
    """The tiny random SD 1.x txt2img folder under `root` (32x32 by default, sizes in multiples of 4)."""
    torch.manual_seed(0)
    unet, vae, text = _components()
    return _save_folder(root, unet, vae, text, "StableDiffusionPipeline")


def shared_tiny_sd_folder(tmp_path_factory) -> Path:
    """One tiny SD folder per test session (built on first use), for the modules that only read it."""
    root = tmp_path_factory.getbasetemp() / "shared-tiny-sd"
    if not (root / "model_index.json").is_file():
        tiny_sd_folder(root)
    return root
