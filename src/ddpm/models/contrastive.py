"""CLIP-style contrastive encoders trained from scratch (Radford et al. 2021, Sec. 2.3 and Fig. 3): an image
tower (a small ViT of CLIP's own layout) and the project's word transformer, each projected into one
embedding space, and the symmetric InfoNCE loss with a learned temperature.

| symbol  | code            | meaning                                                                |
| ------- | --------------- | ---------------------------------------------------------------------- |
| I_i     | `image_embeds`  | `[B, E]` unit image embeddings                                          |
| T_j     | `text_embeds`   | `[B + M, E]` unit text embeddings: the B captions, then M extra negatives |
| s       | `logit_scale`   | log(1 / tau), learned, clamped to log(100) as in CLIP                   |
| L_ij    | `logits`        | e^s I_i . T_j                                                           |
| InfoNCE | `info_nce`      | (CE_rows(L, i) + CE_cols(L[:, :B], j)) / 2                             |

The text embedding is the state at `<eos>` (the last real token, which has seen the whole caption even
under a causal mask) through `text_projection`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.base import DictConfig
from .clip_vision import CLIPVisionConfig, CLIPVisionModelWithProjection
from .small_text_encoder import SmallTextConfig, SmallTextEncoder

__all__ = ["ContrastiveConfig", "ContrastiveModel", "info_nce", "MAX_LOGIT_SCALE"]

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the learned scale at 100 (Sec. 2.5)


@dataclass
class ContrastiveConfig(DictConfig):
    """Both towers' configs (as dicts, JSON-able) and the initial temperature."""

    image: dict[str, Any]
    text: dict[str, Any]
    temperature: float = 0.07

    def __post_init__(self) -> None:
        vision, text = self.vision_config, self.text_config  # checks both now
        if not 0 < self.temperature < 1:
            raise ValueError(f"temperature must lie in (0, 1), got {self.temperature}")
        del vision, text

    @property
    def vision_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig.from_dict(self.image)

    @property
    def text_config(self) -> SmallTextConfig:
        return SmallTextConfig.from_dict(self.text)

    @property
    def embed_dim(self) -> int:
        return self.vision_config.projection_dim


class ContrastiveModel(nn.Module):
    """`model(images [B, 3, S, S] in [-1, 1], input_ids [N, L], attention_mask [N, L])` ->
    (unit image embeddings `[B, E]`, unit text embeddings `[N, E]`, logit_scale `[]`)."""

    def __init__(self, config: ContrastiveConfig) -> None:
        super().__init__()
        self.config = config
        self.image = CLIPVisionModelWithProjection(config.vision_config)
        text = config.text_config
        self.text = SmallTextEncoder(text)
        self.text_projection = nn.Linear(text.width, config.embed_dim, bias=False)
        nn.init.normal_(self.text_projection.weight, std=text.width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.temperature)))

    def encode_image(self, images: Tensor) -> Tensor:
        """Unit embeddings `[B, E]` of images `[B, 3, S, S]` in [-1, 1] (the project's pixel range)."""
        return F.normalize(self.image(images).image_embeds, dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Unit embeddings `[N, E]` of token ids `[N, L]`: the `<eos>` state through `text_projection`."""
        h = self.text(input_ids, attention_mask)
        eos = attention_mask.long().sum(dim=1) - 1  # the last real token
        pooled = h[torch.arange(h.shape[0], device=h.device), eos]
        return F.normalize(self.text_projection(pooled), dim=-1)

    def forward(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE)
        return self.encode_image(images), self.encode_text(input_ids, attention_mask), scale

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def info_nce(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE (CLIP Fig. 3): image i's caption is text i among all `[B + M]` texts (the M extra
    rows are negatives only), text i's image is image i among the B; the mean of the two cross-entropies."""
    b = image_embeds.shape[0]
    if text_embeds.shape[0] < b:
        raise ValueError(f"info_nce needs a caption per image: {b} images, {text_embeds.shape[0]} texts")
    logits = logit_scale.exp() * image_embeds.float() @ text_embeds.float().T  # [B, B + M]
    target = torch.arange(b, device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :b].T, target)) / 2
