"""CLIP's vision transformer (Radford et al. 2021, Sec. 2.4; Dosovitskiy et al. 2021, "ViT", Eq. 1-4), in
the `transformers` `CLIPVisionModelWithProjection` layout, and `CLIPModel`: both towers with their
projections into the joint embedding space and the learned temperature.

| symbol | code                 | meaning                                                               |
| ------ | -------------------- | --------------------------------------------------------------------- |
| x      | `pixel_values`       | `[B, 3, S, S]`, S = `image_size`, normalised by `CLIPImageProcessor`'s |
|        |                      | mean / std (`ddpm.data.clip_images.clip_preprocess`)                   |
| P, N   | `patch_size`         | patch side; N = (S / P)^2 patches                                      |
| z_0    |                      | `[B, N + 1, D]`: [class_embedding; patches W_p] + position embeddings  |
| h      | `last_hidden_state`  | `[B, N + 1, D]`, the encoder's output (no final LN: that is CLS-only)  |
| pooled | `pooled`             | `[B, D]`: post_layernorm(h[:, 0]), the class token                     |
| e      | `image_embeds`       | `[B, E]`: visual_projection(pooled), E = `projection_dim`              |

ViT-L/14 (the image tower of `openai/clip-vit-large-patch14`, whose text tower SD 1.x uses): S 224, P 14,
D 1024, 24 layers, 16 heads, E 768. A layer norm sits before the encoder (`pre_layrnorm`, transformers'
spelling) and on the class token after it (`post_layernorm`); the layers are the text tower's
(`ddpm.nn.clip_layers`), without the causal mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.base import DictConfig
from ..nn.clip_layers import CLIP_ACTIVATIONS, CLIPEncoder
from .text_encoder import CLIPTextConfig, CLIPTextModel

__all__ = ["CLIPVisionConfig", "CLIPVisionModelWithProjection", "CLIPVisionOutput", "CLIPModel",
           "clip_score"]


@dataclass
class CLIPVisionConfig(DictConfig):
    """Hyper-parameters of `CLIPVisionModelWithProjection` (defaults: CLIP ViT-L/14 at 224); JSON-able."""

    image_size: int = 224
    patch_size: int = 14
    channels: int = 3
    width: int = 1024
    layers: int = 24
    heads: int = 16
    intermediate: int = 4096
    projection_dim: int = 768
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "width", "layers", "heads", "intermediate",
                     "projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CLIPVisionConfig.{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"heads={self.heads} must divide width={self.width}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}")
        if self.act not in CLIP_ACTIVATIONS:
            raise ValueError(f"act must be one of {CLIP_ACTIVATIONS}, got {self.act!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_transformers(cls, d: dict[str, Any], *, projection_dim: int | None = None) -> CLIPVisionConfig:
        """From a transformers CLIP vision `config.json` dict, or a full CLIP one (via `vision_config`)."""
        top = d
        d = d.get("vision_config", d)
        proj = projection_dim or d.get("projection_dim") or top.get("projection_dim") or 512
        return cls(
            image_size=d.get("image_size", 224), patch_size=d.get("patch_size", 32),
            channels=d.get("num_channels", 3), width=d.get("hidden_size", 768),
            layers=d.get("num_hidden_layers", 12), heads=d.get("num_attention_heads", 12),
            intermediate=d.get("intermediate_size", 3072), projection_dim=int(proj),
            act=d.get("hidden_act", "quick_gelu"), layer_norm_eps=d.get("layer_norm_eps", 1e-5),
        )

    def to_transformers(self) -> dict[str, Any]:
        """The equivalent transformers `CLIPVisionConfig` fields."""
        return {"model_type": "clip_vision_model", "image_size": self.image_size,
                "patch_size": self.patch_size, "num_channels": self.channels, "hidden_size": self.width,
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "intermediate_size": self.intermediate, "projection_dim": self.projection_dim,
                "hidden_act": self.act, "layer_norm_eps": self.layer_norm_eps}


class CLIPVisionOutput(NamedTuple):
    """`image_embeds [B, E]`, `last_hidden_state [B, N + 1, D]`, `pooled [B, D]` (the normed CLS token)."""

    image_embeds: Tensor
    last_hidden_state: Tensor
    pooled: Tensor


class _VisionEmbeddings(nn.Module):
    def __init__(self, c: CLIPVisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(c.width))
        self.patch_embedding = nn.Conv2d(c.channels, c.width, c.patch_size, stride=c.patch_size, bias=False)
        self.position_embedding = nn.Embedding(c.num_patches + 1, c.width)

    def forward(self, pixel_values: Tensor) -> Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(patches.dtype)


class _VisionTransformer(nn.Module):
    def __init__(self, c: CLIPVisionConfig) -> None:
        super().__init__()
        self.embeddings = _VisionEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.encoder = CLIPEncoder(c.layers, c.width, c.heads, c.intermediate, act=c.act,
                                   eps=c.layer_norm_eps, causal=False)
        self.post_layernorm = nn.LayerNorm(c.width, eps=c.layer_norm_eps)


class CLIPVisionModelWithProjection(nn.Module):
    """CLIP's image tower: `pixel_values [B, 3, S, S]` -> `image_embeds [B, E]` (and the token states)."""

    def __init__(self, config: CLIPVisionConfig | None = None) -> None:
        super().__init__()
        self.config = CLIPVisionConfig() if config is None else config
        self.vision_model = _VisionTransformer(self.config)
        self.visual_projection = nn.Linear(self.config.width, self.config.projection_dim, bias=False)
        self.register_load_state_dict_pre_hook(_drop_position_ids)
        if not self.visual_projection.weight.is_meta:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """CLIP's initialisation of its ViT (the released `initialize_parameters` scales)."""
        c = self.config
        scale = c.width**-0.5
        vm = self.vision_model
        nn.init.normal_(vm.embeddings.class_embedding, std=scale)
        nn.init.normal_(vm.embeddings.position_embedding.weight, std=scale)
        nn.init.normal_(vm.embeddings.patch_embedding.weight, std=(c.channels * c.patch_size**2) ** -0.5)
        vm.encoder.reset_parameters(attn_std=scale, proj_std=scale * (2 * c.layers) ** -0.5,
                                    fc_std=(2 * c.width) ** -0.5)
        for norm in (vm.pre_layrnorm, vm.post_layernorm):
            norm.reset_parameters()
        nn.init.normal_(self.visual_projection.weight, std=scale)

    def forward(self, pixel_values: Tensor) -> CLIPVisionOutput:
        c = self.config
        expected = (c.channels, c.image_size, c.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"pixel_values must be [B, {', '.join(map(str, expected))}], got "
                             f"{tuple(pixel_values.shape)}; preprocess images with clip_preprocess")
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixel_values))
        for layer in vm.encoder.layers:
            x = layer(x)
        pooled = vm.post_layernorm(x[:, 0])
        return CLIPVisionOutput(self.visual_projection(pooled), x, pooled)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _drop_position_ids(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: Any) -> None:
    """Older transformers files carry a `position_ids` buffer; it is arange(N + 1), so it is dropped."""
    state_dict.pop(prefix + "vision_model.embeddings.position_ids", None)


class CLIPModel(nn.Module):
    """Both CLIP towers with their projections into the joint space and the learned log temperature
    (CLIP Fig. 3): `text`, `text_projection [E, D_t]`, `vision` and `logit_scale` (log 1/tau)."""

    def __init__(self, text: CLIPTextConfig, vision: CLIPVisionConfig) -> None:
        super().__init__()
        self.text = CLIPTextModel(text)
        self.text_projection = nn.Linear(text.width, vision.projection_dim, bias=False)
        self.vision = CLIPVisionModelWithProjection(vision)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if not self.text_projection.weight.is_meta:
            nn.init.normal_(self.text_projection.weight, std=text.width**-0.5)

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """Text embeddings `[B, E]`: the pooled (EOS) state through `text_projection`."""
        return self.text_projection(self.text(input_ids).pooled)

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """Image embeddings `[B, E]` of preprocessed `pixel_values [B, 3, S, S]`."""
        return self.vision(pixel_values).image_embeds


def clip_score(image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    """CLIP score per pair `[B]`: 100 * max(cos(e_image, e_text), 0) (Hessel et al. 2021, "CLIPScore",
    Eq. 1 with w = 100 as torchmetrics and the SD literature report it)."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"clip_score needs paired embeddings of one shape, got {tuple(image_embeds.shape)} "
                         f"and {tuple(text_embeds.shape)}")
    cos = F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
    return 100.0 * cos.clamp_min(0.0)
