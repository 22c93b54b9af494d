"""Loading and saving weights safely: our own model files, checkpoints read by content (safetensors first,
pickles only through torch's restricted unpickler), the Stable Diffusion 1.x layouts, and PNGs with
reproduction metadata.

Names resolve lazily so that importing one submodule (e.g. `ddpm.io.images`) does not load the model code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "load_state_dict": "checkpoint",
    "detect_format": "checkpoint",
    "UnsafeCheckpointError": "checkpoint",
    "load_stable_diffusion": "sd",
    "StableDiffusionModels": "sd",
    "save_single_file": "sd",
    "save_diffusers_folder": "sd",
    "save_model_file": "model_file",
    "load_model_file": "model_file",
    "read_model_meta": "model_file",
    "file_hash": "model_file",
    "save_png": "images",
    "read_png_metadata": "images",
    "make_grid": "images",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ddpm.io' has no attribute {name!r}")
