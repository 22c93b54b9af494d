"""Image-embedding conditioning (`data.condition = "clip_image"`): an unCLIP decoder (DALL·E 2, Ramesh et al.
2022, Sec. 2.1) sees the embedding of its target image by a frozen contrastive image encoder.

| symbol | code          | meaning                                                                       |
| ------ | ------------- | ----------------------------------------------------------------------------- |
| z_i    | `image_embed` | `[B, E]`: the unit image embedding times sqrt(E) (`EMBED_SCALE`), so its       |
|        |               | entries have about unit variance, as the UNet's other inputs and the prior's   |
|        |               | diffusion over it expect                                                        |
| null   | zeros         | the embedding of a sample dropped for classifier-free guidance                  |

The encoder is frozen and stays outside the conditioner's state dict: it is neither optimised, averaged by
the EMA nor written into the decoder's file; its path and content hash are (`meta()["image_encoder"]`), and
a pipeline re-loads it from there. The factory that reads the file is registered by `ddpm.training`
(`tasks/unclip.py`), since files are read above this layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..models.contrastive import ContrastiveModel
from .base import Conditioner

__all__ = ["ClipImageConditioner", "embed_scale"]

_PREVIEW_ROWS = 4


def embed_scale(dim: int) -> float:
    """sqrt(E): unit embeddings times this have entries of about unit variance."""
    return math.sqrt(dim)


class ClipImageConditioner(Conditioner):
    """`forward(batch, drop)` -> {"image_embed": sqrt(E) * encode_image(batch["image"])}, zeros where
    dropped."""

    kind = "clip_image"

    def __init__(self, encoder: ContrastiveModel, source: dict[str, Any]) -> None:
        super().__init__()
        self._frozen = [encoder.eval().requires_grad_(False)]  # a list: not a submodule, not in state_dict
        self.source = dict(source)
        self.embed_dim = int(encoder.config.embed_dim)
        self.preview_images: Tensor | None = None  # [n, 3, S, S]: the preview grid's rows

    @property
    def encoder(self) -> ContrastiveModel:
        return self._frozen[0]

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """`[B, E]` scaled embeddings of images `[B, 3, S, S]` in [-1, 1]."""
        enc = self.encoder
        p = next(enc.parameters())
        if p.device != images.device:
            enc.to(images.device)
        size = enc.config.vision_config.image_size
        if tuple(images.shape[-2:]) != (size, size) or images.shape[1] != 3:
            raise ValueError(f"the image encoder reads RGB images of {size}x{size}; got "
                             f"{tuple(images.shape[1:])}")
        return enc.encode_image(images.float()) * embed_scale(self.embed_dim)

    def forward(self, batch: dict[str, Any], drop: Tensor | None) -> dict[str, Tensor]:
        z = self.embed(batch["image"])
        if drop is not None:
            z = torch.where(drop.to(z.device)[:, None], torch.zeros_like(z), z)
        return {"image_embed": z}

    def unet_fields(self) -> dict[str, Any]:
        return {"image_embed_dim": self.embed_dim, "context_dim": self.embed_dim}

    def preview(self, num: int, *, device: torch.device) -> tuple[int, dict | None, dict | None, int]:
        """One row per preview image (its embedding), max(1, num // rows) samples each."""
        if self.preview_images is None:
            return super().preview(num, device=device)
        rows = self.preview_images[:_PREVIEW_ROWS].to(device)
        per_row = max(1, num // len(rows))
        z = self.embed(rows).repeat_interleave(per_row, dim=0)
        return len(z), {"image_embed": z}, {"image_embed": torch.zeros_like(z)}, per_row

    def meta(self) -> dict[str, Any]:
        return {"type": self.kind, "num_classes": None, "text_encoder": None,
                "image_encoder": {**self.source, "embed_dim": self.embed_dim}}
