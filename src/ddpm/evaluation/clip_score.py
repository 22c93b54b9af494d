"""CLIP score of generated images against their prompts (Hessel et al. 2021, "CLIPScore"): each PNG's
prompt is read from the metadata the project writes (`io.images`: the "ddpm" JSON, else the first line of
"parameters"), the image goes through `CLIPImageProcessor`'s recipe (`data.clip_images`) and the CLIP
vision tower, the prompt through the CLIP text tower, and the score is 100 * max(cos, 0), averaged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.clip_images import clip_preprocess
from ..data.decode import open_image
from ..io.images import read_png_metadata
from ..models.clip_vision import CLIPModel, clip_score
from .metrics import MetricResult

__all__ = ["png_prompt", "image_paths", "score_pngs", "clip_preprocess_sizes"]


def png_prompt(path: str | Path) -> str:
    """The prompt a generated PNG records; ValueError naming the file when it records none."""
    chunks = read_png_metadata(path)
    prompt = None
    if "ddpm" in chunks:
        try:
            prompt = json.loads(chunks["ddpm"]).get("prompt")
        except (json.JSONDecodeError, AttributeError):
            prompt = None
    if prompt is None and chunks.get("parameters"):
        prompt = chunks["parameters"].split("\n", 1)[0]
    if not prompt:
        raise ValueError(f"{path} has no prompt in its metadata (no 'ddpm' JSON with a prompt, no "
                         "'parameters' text); CLIP score needs images written by ddpm txt2img or a web UI")
    return str(prompt)


def image_paths(sources: Sequence[str | Path]) -> list[Path]:
    """The PNGs of `sources` (files, or folders whose *.png are taken in name order; grid.png skipped)."""
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            out.extend(q for q in sorted(p.glob("*.png")) if q.name != "grid.png")
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {str(p)!r}")
    if not out:
        raise ValueError(f"no PNG images found in {', '.join(map(str, sources))}")
    return out


def clip_preprocess_sizes(folder: str | Path, image_size: int) -> tuple[int, int]:
    """(resize, crop) from a CLIP folder's `preprocessor_config.json`, else the tower's own image size."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return image_size, image_size
    cfg = json.loads(path.read_text())
    size = cfg.get("size", image_size)
    size = size.get("shortest_edge", image_size) if isinstance(size, dict) else int(size)
    crop = cfg.get("crop_size", image_size)
    crop = crop.get("height", image_size) if isinstance(crop, dict) else int(crop)
    return int(size), int(crop)


@torch.no_grad()
def score_pngs(
    model: CLIPModel, tokenizer: Any, paths: Sequence[Path], *, size: int, crop: int, batch_size: int = 32,
) -> MetricResult:
    """Mean CLIP score of `paths` against the prompts in their metadata (per-image scores in details)."""
    prompts = [png_prompt(p) for p in paths]  # every prompt checked before any image is encoded
    max_length = model.text.config.max_positions
    scores: list[float] = []
    for i in range(0, len(paths), batch_size):
        images = []
        for p in paths[i:i + batch_size]:
            with open_image(p) as im:
                images.append(im.convert("RGB"))
        image = model.encode_image(clip_preprocess(images, size=size, crop=crop))
        ids = tokenizer(prompts[i:i + batch_size], max_length=max_length)
        scores.extend(clip_score(image, model.encode_text(ids)).tolist())
    t = torch.tensor(scores)
    std = float(t.std()) if len(t) > 1 else 0.0
    return MetricResult(
        "clip-score", float(t.mean()),
        f"100·max(cos, 0) of CLIP image and prompt embeddings, mean of {len(t)} images (sd {std:.2f})",
        {"num": len(t), "std": std, "per_image": {str(p): s for p, s in zip(paths, scores)}},
    )
