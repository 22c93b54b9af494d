"""Reranking (DALL·E, Ramesh et al. 2021, Sec. 2.5): generate N candidates per prompt, score each against
its prompt with a contrastive image-text model, keep the best k.

A scorer is a CLIP folder (transformers layout; images preprocessed as `CLIPImageProcessor` does) or a
ddpm contrastive model file / run folder (images fed at the model's own size in [-1, 1]). The score is
100 * cos(image, prompt) (CLIP score without its clamp at 0, so that ranks below zero stay ordered).
Kept images carry their score, rank and the scores of all candidates of their prompt in the metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Scorer", "load_scorer", "rerank"]


class Scorer:
    """`scorer(images [N, C, H, W] in [-1, 1], prompts [N]) -> [N]` scores, 100 * cos; `name` for metadata."""

    def __init__(self, name: str, encode_images: Any, encode_texts: Any) -> None:
        self.name = name
        self._images, self._texts = encode_images, encode_texts

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str], *, batch_size: int = 64) -> Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts; give one prompt per image")
        out = []
        for i in range(0, len(images), batch_size):
            a = F.normalize(self._images(images[i:i + batch_size]).float(), dim=-1)
            b = F.normalize(self._texts(list(prompts[i:i + batch_size])).float(), dim=-1)
            out.append(100.0 * (a * b).sum(-1))
        return torch.cat(out)


def load_scorer(path: str | Path) -> Scorer:
    """The scorer of a CLIP folder (it has config.json with both towers) or of a contrastive model file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such reranking model: {str(path)!r} (a CLIP folder, or a contrastive "
                                "model file / run folder)")
    if path.is_dir() and (path / "config.json").is_file():
        from ..data.clip_images import clip_preprocess, tensor_to_pil
        from ..evaluation.clip_score import clip_preprocess_sizes
        from ..io.clip_files import load_clip

        model, tokenizer = load_clip(path)
        size, crop = clip_preprocess_sizes(path, model.vision.config.image_size)
        length = model.text.config.max_positions
        return Scorer(
            path.name,
            lambda x: model.encode_image(clip_preprocess(tensor_to_pil(x), size=size, crop=crop)),
            lambda p: model.encode_text(tokenizer(p, max_length=length)),
        )
    from ..io.clip_files import load_contrastive_file

    model, tokenizer, meta = load_contrastive_file(path)
    size = int(meta.data.image_size or 32)

    def images(x: Tensor) -> Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        return model.encode_image(x)

    def texts(p: list[str]) -> Tensor:
        tok = tokenizer(p, warn=False)
        return model.encode_text(tok.input_ids, tok.attention_mask)

    return Scorer(path.stem if path.is_file() else path.name, images, texts)


def rerank(
    images: Tensor, metadata: list[dict[str, Any]], scorer: Scorer, *, keep: int
) -> tuple[Tensor, list[dict[str, Any]]]:
    """For each prompt's candidates (images grouped by their metadata's prompt, in order), the `keep`
    best-scoring ones, best first, with "rerank" metadata: score, rank, model, and every candidate's
    seed and score."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    prompts = [str(m.get("prompt") or "") for m in metadata]
    scores = scorer(images, prompts)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    kept_images, kept_meta = [], []
    for prompt, idx in groups.items():
        if keep > len(idx):
            raise ValueError(f"cannot keep {keep} of {len(idx)} candidates of {prompt!r}; generate more")
        order = sorted(idx, key=lambda i: -float(scores[i]))
        candidates = [{"seed": metadata[i].get("seed"), "score": round(float(scores[i]), 4)} for i in idx]
        for rank, i in enumerate(order[:keep]):
            m = dict(metadata[i])
            m["rerank"] = {"model": scorer.name, "score": round(float(scores[i]), 4), "rank": rank,
                           "candidates": candidates}
            kept_images.append(images[i])
            kept_meta.append(m)
    return torch.stack(kept_images), kept_meta
