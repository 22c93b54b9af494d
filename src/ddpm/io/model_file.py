"""One-file models: EMA weights in a `.safetensors` file that carries its own config.

The config lives as JSON under the safetensors metadata key "ddpm" (ARCHITECTURE.md, "Files"; the
fields are `ddpm.io.model_meta.ModelMeta`):

    {"format": "ddpm.model", "version": 1, "unet": {...}, "diffusion": {...}, "data": {...},
     "conditioning": {...}, "sampling": {...}, "training": {...}}

UNet weights are stored under the key prefix "unet.", text-encoder weights under "text_encoder.".
Files are written atomically (`ddpm.io.atomic`), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .atomic import atomic_write
from .model_meta import FORMAT, VERSION, ModelMeta

__all__ = [
    "FORMAT",
    "VERSION",
    "META_KEY",
    "save_model_file",
    "load_model_file",
    "read_model_meta",
    "read_meta",
    "file_hash",
]

META_KEY = "ddpm"

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def _check_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """`meta` with format and version, checked as a `ModelMeta` (so no file is written unreadable)."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"model file metadata must be a dict or a ModelMeta, got {type(meta).__name__}")
    meta = {"format": FORMAT, "version": VERSION, **meta}
    ModelMeta.from_dict(meta)
    return meta


def save_model_file(
    path: str | Path, tensors: Mapping[str, Tensor], meta: ModelMeta | Mapping[str, Any]
) -> Path:
    """Write `tensors` and the JSON `meta` (stored under metadata key "ddpm") to one `.safetensors` file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a model file must end in .safetensors, got {str(path)!r}")
    try:
        text = json.dumps(meta.to_dict() if isinstance(meta, ModelMeta) else meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model file metadata must be plain JSON (no NaN, no objects): {e}") from e
    text = json.dumps(_check_meta(json.loads(text)), sort_keys=True)
    out: dict[str, Tensor] = {}
    seen: dict[int, str] = {}
    for k, v in tensors.items():
        if not isinstance(v, Tensor):
            raise ValueError(f"tensor {k!r} is a {type(v).__name__}, not a torch.Tensor")
        v = v.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing storage; store a copy of the later ones.
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen and ptr != -1:
            v = v.clone()
        seen[ptr] = k
        out[k] = v
    with atomic_write(path) as tmp:
        try:
            save_file(out, str(tmp), metadata={META_KEY: text})
        except SafetensorError as e:  # an unwritable folder or a full disk, in safetensors' own error type
            raise OSError(f"could not write {path}: {e}") from e
    return path


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The "ddpm" metadata of a model file, without loading its tensors."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as e:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(f"{path} is not a readable .safetensors file ({e})") from e
    if raw is None:
        raise ValueError(
            f"{path} has no {META_KEY!r} metadata, so it is not a ddpm model file; "
            "export one from a training run with `ddpm export runs/NAME --out model.safetensors`"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the {META_KEY!r} metadata is not valid JSON ({e})") from e
    ModelMeta.from_dict(meta, source=str(path))  # a damaged or foreign dict fails here, naming the field
    return meta


def read_meta(path: str | Path) -> ModelMeta:
    """The typed metadata of a model file, without loading its tensors."""
    return ModelMeta.from_dict(read_model_meta(path), source=str(path))


def load_model_file(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a model file: (tensors by key, the "ddpm" metadata dict)."""
    path = _existing(path)
    meta = read_model_meta(path)
    tensors: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return tensors, meta


def file_hash(path: str | Path, *, full: bool = False) -> str:
    """sha256 of the file; the first 10 hex digits unless `full` (the "Model hash" popular web UIs show)."""
    path = _existing(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _HASH_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        _HASH_CACHE[key] = digest
    return digest if full else digest[:10]


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    return path
