"""From a training run to one self-describing model file (`ddpm export`).

A checkpoint's `ema.safetensors` already is a model file: EMA weights in the model-file key layout
("unet.…", and the conditioner's prefix such as "text_encoder.…") with the "ddpm" metadata. Exporting
copies it out of the run folder (atomically), so the metadata written at training time is the one shipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..conditioning import Conditioner
from ..io.model_file import FORMAT, VERSION, load_model_file, save_model_file
from ..io.run_folder import run_model_file
from ..schedules import from_config

__all__ = ["model_meta", "to_file_keys", "from_file_keys", "export_model"]

UNET_PREFIX = "unet."
_MODULE_CONDITIONER_PREFIX = "conditioner."


def model_meta(
    config: Any, unet_config: Any, conditioner: Conditioner, dataset: Any, *, step: int, run: str
) -> dict[str, Any]:
    """The "ddpm" metadata of a model file written by a run (DESIGN.md, "Model file")."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "unet": unet_config.to_dict(),
        "diffusion": {
            "schedule": from_config(config.diffusion.schedule_config()).to_config(),
            "prediction": config.diffusion.prediction,
            "learned_variance": bool(config.diffusion.learned_variance),
        },
        "data": {
            "dataset": str(config.data.dataset),
            "image_size": int(dataset.image_size),
            "channels": int(dataset.channels),
            "class_names": list(dataset.class_names) if getattr(dataset, "class_names", None) else None,
            "options": dict(config.data.options),
        },
        "conditioning": conditioner.meta(),
        "sampling": {
            "sampler": config.sample.sampler,
            "steps": int(config.sample.steps),
            "guidance_scale": float(config.sample.guidance_scale),
            "clip_x0": "static",
        },
        "training": {"step": int(step), "run": run},
    }


def to_file_keys(state: dict[str, Tensor], conditioner: Conditioner) -> dict[str, Tensor]:
    """Training-module keys ("unet.…", "conditioner.…") -> model-file keys ("unet.…", export prefix)."""
    out = {}
    for k, v in state.items():
        if k.startswith(_MODULE_CONDITIONER_PREFIX):
            k = conditioner.export_prefix + k[len(_MODULE_CONDITIONER_PREFIX) :]
        out[k] = v
    return out


def from_file_keys(tensors: dict[str, Tensor], conditioner: Conditioner) -> dict[str, Tensor]:
    """Model-file keys -> training-module keys (the inverse of `to_file_keys`)."""
    prefix = conditioner.export_prefix
    out = {}
    for k, v in tensors.items():
        if not k.startswith(UNET_PREFIX) and k.startswith(prefix):
            k = _MODULE_CONDITIONER_PREFIX + k[len(prefix) :]
        out[k] = v
    return out


def export_model(run: str | Path, out: str | Path) -> Path:
    """Write the EMA weights of `run`'s latest checkpoint as one model file `out` (.safetensors); for an
    autoencoder run, with the latent scaling factor estimated on its training images."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the exported model file must end in .safetensors, got {str(out)!r}")
    tensors, meta = load_model_file(run_model_file(run))
    if "autoencoder" in meta:  # a run of task "autoencoder": ship it with its latent scaling factor
        from .autoencoder import export_autoencoder

        return export_autoencoder(tensors, meta, out)
    return save_model_file(out, tensors, meta)
