"""CLIP checkpoints a user has: a transformers-style folder (`config.json`, `model.safetensors` or its
shards, `vocab.json` + `merges.txt`), as `openai/clip-vit-large-patch14` ships, or a diffusers pipeline's
`image_encoder/` (the vision tower alone). Weights are read without running code (`checkpoint.py`) and
placed by the CLIP key table (`keymaps.CLIP_PARTS`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..models.clip_vision import CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection
from ..models.contrastive import ContrastiveConfig, ContrastiveModel
from ..models.text_encoder import CLIPTextConfig
from ..text.clip_tokenizer import CLIPTokenizer
from ..text.word_tokenizer import WordTokenizer
from .checkpoint import load_state_dict
from .keymaps import clip_from_transformers, strip_prefix
from .model_file import file_hash, load_model_file
from .model_meta import ModelMeta
from .run_folder import run_model_file

__all__ = ["load_clip", "load_clip_vision", "read_clip_weights", "load_contrastive_file",
           "load_frozen_encoder",           "model_file_of"]

_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_INDEX = "model.safetensors.index.json"


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a CLIP folder: it has no config.json (expected a "
                                "transformers-style folder such as openai/clip-vit-large-patch14)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def read_clip_weights(folder: str | Path) -> dict[str, Tensor]:
    """The tensors of a CLIP folder (one file or the shards its index lists), in transformers names."""
    folder = Path(folder)
    if (folder / _INDEX).is_file():
        index = json.loads((folder / _INDEX).read_text())
        out: dict[str, Tensor] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            out.update(load_state_dict(folder / shard))
        return out
    path = next((folder / n for n in _WEIGHTS if (folder / n).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{folder} holds no CLIP weights; expected one of {list(_WEIGHTS)} or "
                                f"{_INDEX}")
    return load_state_dict(path)


def _load(module: torch.nn.Module, tensors: dict[str, Tensor], folder: Path) -> None:
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"the weights in {folder} do not fit its config.json: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")


def load_clip_vision(path: str | Path) -> CLIPVisionModelWithProjection:
    """The vision tower with its projection from a CLIP folder (whole model or vision-only), in eval mode."""
    folder = Path(path)
    if (folder / "image_encoder" / "config.json").is_file():  # a diffusers pipeline folder
        folder = folder / "image_encoder"
    config = CLIPVisionConfig.from_transformers(_config(folder))
    ours = clip_from_transformers(read_clip_weights(folder))
    vision = strip_prefix(ours, "vision.")
    if not vision:
        raise ValueError(f"{folder} holds no vision tower (no vision_model.* weights)")
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    model = model.to_empty(device="cpu")
    _load(model, vision, folder)
    return model.eval()


def load_clip(path: str | Path) -> tuple[CLIPModel, CLIPTokenizer]:
    """Both towers, the projections and the tokenizer of a whole CLIP folder, in eval mode."""
    folder = Path(path)
    raw = _config(folder)
    if "text_config" not in raw or "vision_config" not in raw:
        raise ValueError(f"{folder}/config.json is not a whole CLIP model (it lacks text_config or "
                         "vision_config); CLIP score needs both towers, as in openai/clip-vit-large-patch14")
    text = CLIPTextConfig.from_transformers(raw)
    vision = CLIPVisionConfig.from_transformers(raw, projection_dim=raw.get("projection_dim"))
    tok_folder = folder / "tokenizer" if (folder / "tokenizer" / "vocab.json").is_file() else folder
    tokenizer = CLIPTokenizer.from_folder(tok_folder)
    with torch.device("meta"):
        model = CLIPModel(text, vision)
    model = model.to_empty(device="cpu")
    _load(model, clip_from_transformers(read_clip_weights(folder)), folder)
    return model.eval(), tokenizer


def load_contrastive_file(path: str | Path) -> tuple[ContrastiveModel, WordTokenizer, ModelMeta]:
    """The encoders, word tokenizer and metadata of a contrastive model file (run.task = "contrastive"),
    in eval mode; a file of another kind is a ValueError that says what it holds."""
    if Path(path).is_dir():  # a run folder: its latest checkpoint's EMA weights
        path = run_model_file(path)
    tensors, raw = load_model_file(path)
    meta = ModelMeta.from_dict(raw, source=str(path))
    if meta.kind != "contrastive":
        raise ValueError(f"{path} is a {meta.kind} model, not contrastive encoders (train those with "
                         '[run] task = "contrastive")')
    section = meta.contrastive or {}
    model = ContrastiveModel(ContrastiveConfig.from_dict(section["model"]))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"the weights of {path} do not fit its metadata: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    return model.eval(), WordTokenizer.from_dict(section["tokenizer"]), meta


def model_file_of(path: str | Path) -> Path:
    """`path` itself (a model file), or a run folder's latest EMA model file; missing: FileNotFoundError."""
    p = Path(path)
    if p.is_dir():
        return run_model_file(p)
    if not p.is_file():
        raise FileNotFoundError(f"no such run folder or model file: {str(p)!r}")
    return p


def load_frozen_encoder(source: dict[str, Any], owner: str) -> tuple[ContrastiveModel, WordTokenizer]:
    """The contrastive model (and its tokenizer) an unCLIP decoder or prior recorded in its metadata
    (`source["path"]`, `source["hash"]`), frozen, in eval mode; a missing file is an error naming `owner`
    and the path, a changed one (another content hash) a warning."""
    path = source.get("path")
    if not path or not Path(path).exists():
        raise FileNotFoundError(f"{owner} was trained on the contrastive model {path!r} (recorded in its "
                                "metadata), which is missing; put that file (or run folder) back at that "
                                "path")
    file = model_file_of(path)
    if source.get("hash") and file_hash(file) != source["hash"]:
        warnings.warn(f"{owner}: its image encoder {path} has changed since training (hash "
                      f"{source['hash']} -> {file_hash(file)}); outputs may not match", stacklevel=2)
    model, tokenizer, _ = load_contrastive_file(file)
    return model.requires_grad_(False), tokenizer
