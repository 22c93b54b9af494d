"""`AutoencoderKL` files: diffusers folders (`config.json` + `diffusion_pytorch_model.*`, or a pipeline's
`vae/`), Stable Diffusion single files (whole or VAE-only) and our own model files (weights under "vae.",
the config in the "ddpm" metadata). Weights are read by content through `ddpm.io.checkpoint`; the key maps
are `ddpm.io.keymaps`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ..models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from .atomic import atomic_write_bytes
from .checkpoint import load_state_dict
from .diffusers_configs import vae_config_from_diffusers, vae_config_to_diffusers
from .keymaps import (
    MODEL_FILE,
    SINGLE_FILE,
    add_prefix,
    strip_prefix,
    vae_conv_attention,
    vae_from_diffusers,
    vae_from_single_file,
    vae_to_diffusers,
)
from .model_file import FORMAT, VERSION, load_model_file, save_model_file

__all__ = [
    "vae_from_state_dict",
    "load_vae_folder",
    "save_vae_folder",
    "load_vae_single_file",
    "save_autoencoder_file",
    "load_autoencoder_file",
]

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin")


def vae_from_state_dict(
    state_dict: Mapping[str, Tensor],
    config: AutoencoderKLConfig,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device = "cpu",
) -> AutoencoderKL:
    """An `AutoencoderKL(config)` with a checked copy of `state_dict` (our names); `dtype=None`: its dtype."""
    with torch.device("meta"):
        model = AutoencoderKL(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = vae_conv_attention(state_dict)  # some single files store the attention projections as Linear
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k}: {tuple(sd[k].shape)} vs {expected[k]}" for k in expected if k in sd
             and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(
            "the weights do not fit this AutoencoderKL config "
            f"(base_channels={config.base_channels}, channel_mult={list(config.channel_mult)}, "
            f"num_res_blocks={config.num_res_blocks}): missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}; pass the config the weights were trained with"
        )
    # Fresh storage, then a copy: the model never aliases the caller's tensors (e.g. another model's weights).
    if dtype is None:
        dtype = next(v.dtype for v in sd.values() if v.is_floating_point())
    model = model.to_empty(device=device).to(dtype=dtype)
    model.load_state_dict(sd, strict=True)
    return model


def _folder(path: str | Path) -> Path:
    path = Path(path)
    if (path / "vae" / "config.json").is_file():  # a whole pipeline folder
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a diffusers AutoencoderKL folder (no config.json)")
    return path


def load_vae_folder(
    path: str | Path, *, dtype: torch.dtype | None = torch.float32, device: str | torch.device = "cpu"
) -> AutoencoderKL:
    """Our `AutoencoderKL` from a diffusers folder (`config.json` + weights) or a pipeline's `vae/`."""
    folder = _folder(path)
    config = vae_config_from_diffusers(json.loads((folder / "config.json").read_text()))
    weights = next((folder / name for name in _WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} holds no weights; expected one of {list(_WEIGHT_FILES)}")
    raw = load_state_dict(weights)  # format by content; pickles only through the restricted unpickler
    return vae_from_state_dict(vae_from_diffusers(raw), config, dtype=dtype, device=device)


def save_vae_folder(model: AutoencoderKL, path: str | Path) -> Path:
    """Write `model` as a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in vae_to_diffusers(model.state_dict()).items()}
    atomic_write_bytes(folder / _WEIGHT_FILES[0], safetensors_bytes(tensors))
    text = json.dumps(vae_config_to_diffusers(model.config), indent=2) + "\n"
    atomic_write_bytes(folder / "config.json", text.encode())
    return folder


def _read_single_file(path: Path) -> dict[str, Tensor]:
    """A single file's autoencoder tensors (all of them in a VAE-only file), read by content, not suffix."""
    try:  # a whole SD file: read only the autoencoder's tensors (not the 4 GB of UNet and text encoder)
        return load_state_dict(path, prefix=SINGLE_FILE.vae)
    except ValueError as error:
        if "no tensors named" not in str(error):
            raise
    return load_state_dict(path)  # a VAE-only file


def load_vae_single_file(
    source: str | Path | Mapping[str, Tensor],
    *,
    config: AutoencoderKLConfig | None = None,
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device = "cpu",
) -> AutoencoderKL:
    """Our `AutoencoderKL` from an SD single file (path or dict), which has no config: default SD 1.5's."""
    if isinstance(source, Mapping):
        raw: Mapping[str, Tensor] = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        raw = _read_single_file(path)
    sd = {k: v for k, v in vae_from_single_file(raw).items() if not k.startswith(("loss.", "model_ema."))}
    return vae_from_state_dict(sd, config or AutoencoderKLConfig.sd15(), dtype=dtype, device=device)


def save_autoencoder_file(
    path: str | Path, model: AutoencoderKL, *, meta: Mapping[str, Any] | None = None
) -> Path:
    """One self-describing `.safetensors` (weights under "vae.", config in the "ddpm" metadata)."""
    full = {"format": FORMAT, "version": VERSION, **dict(meta or {}), "autoencoder": model.config.to_dict()}
    return save_model_file(path, add_prefix(model.state_dict(), MODEL_FILE.vae), full)


def load_autoencoder_file(
    path: str | Path, *, dtype: torch.dtype | None = torch.float32, device: str | torch.device = "cpu"
) -> tuple[AutoencoderKL, dict[str, Any]]:
    """(model, metadata) from a file written by `save_autoencoder_file` (or any model file with a VAE)."""
    tensors, meta = load_model_file(path)
    if "autoencoder" not in meta:
        raise ValueError(f"{path} holds no autoencoder (its metadata has no 'autoencoder' config)")
    config = AutoencoderKLConfig.from_dict(meta["autoencoder"])
    model = vae_from_state_dict(strip_prefix(tensors, MODEL_FILE.vae), config, dtype=dtype, device=device)
    return model, meta
