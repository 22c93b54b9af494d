"""The CLIP text transformer (Radford et al. 2021, "CLIP", Sec. 2.4) in the Stable Diffusion 1.x layout.

| symbol | code              | meaning                                                             |
| ------ | ----------------- | ------------------------------------------------------------------- |
| B, L   |                   | batch, sequence length (<= `max_positions`, 77 for SD)               |
| D      | `width`           | token width (768 for SD 1.x's ViT-L/14 text tower)                   |
| ids    | `input_ids`       | token ids `[B, L]` from `ddpm.text.CLIPTokenizer`                    |
| h      | `last_hidden_state` | `[B, L, D]`: the tokens the UNet cross-attends to, after the final LN |
| pooled | `pooled`          | `[B, D]`: h at each prompt's EOS position                            |

A pre-LN transformer with a causal mask (GPT-2 style; CLIP's text tower, 12 layers, width 768, 12
heads, quick-GELU, 77 learned positions, final layer norm: 123.06M parameters). Parameter names are
the `transformers` layout, so an SD 1.x single-file checkpoint's keys are
`cond_stage_model.transformer.` + ours, and a diffusers `text_encoder/` folder loads directly (with
or without the `text_model.` level, with or without a `position_ids` buffer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..config.base import DictConfig
from ..nn.clip_layers import CLIP_ACTIVATIONS, CLIPEncoder

__all__ = ["CLIPTextConfig", "CLIPTextModel", "CLIPTextOutput", "ACTIVATIONS"]

ACTIVATIONS = CLIP_ACTIVATIONS
_LEGACY_EOS_ID = 2  # transformers configs saved before mid-2023 say 2 and mean "pool at argmax(ids)"


@dataclass
class CLIPTextConfig(DictConfig):
    """Hyper-parameters of `CLIPTextModel` (defaults: SD 1.x's ViT-L/14 text tower); JSON-able.

    `eos_token_id=None` pools at the largest id of each row (CLIP's own rule: EOS is the last id of
    its vocabulary, as in every SD 1.x checkpoint); an int pools at that id's first occurrence.
    """

    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 77
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 49407
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "width", "layers", "heads", "intermediate", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CLIPTextConfig.{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"heads={self.heads} must divide width={self.width}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(
                f"eos_token_id={self.eos_token_id} is not an id of a {self.vocab_size}-token vocabulary"
            )

    @classmethod
    def from_transformers(cls, d: dict[str, Any]) -> CLIPTextConfig:
        """From a `transformers` CLIP text `config.json` dict (or a full CLIP config, via `text_config`)."""
        d = d.get("text_config", d)
        eos = d.get("eos_token_id", _LEGACY_EOS_ID)
        return cls(
            vocab_size=d.get("vocab_size", 49408),
            width=d.get("hidden_size", 512),
            layers=d.get("num_hidden_layers", 12),
            heads=d.get("num_attention_heads", 8),
            intermediate=d.get("intermediate_size", 2048),
            max_positions=d.get("max_position_embeddings", 77),
            act=d.get("hidden_act", "quick_gelu"),
            layer_norm_eps=d.get("layer_norm_eps", 1e-5),
            pad_token_id=d.get("pad_token_id", 1),
            eos_token_id=None if eos == _LEGACY_EOS_ID else eos,
        )

    def to_transformers(self) -> dict[str, Any]:
        """The equivalent `transformers` CLIPTextConfig fields (for writing a diffusers `text_encoder/`)."""
        return {
            "model_type": "clip_text_model",
            "vocab_size": self.vocab_size,
            "hidden_size": self.width,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
            "max_position_embeddings": self.max_positions,
            "hidden_act": self.act,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": _LEGACY_EOS_ID if self.eos_token_id is None else self.eos_token_id,
        }


class CLIPTextOutput(NamedTuple):
    """`last_hidden_state [B, L, D]` (after the final LN), `pooled [B, D]`, and, if asked, the residual
    stream before each layer and after the last one run (`len = layers_run + 1`, each `[B, L, D]`)."""

    last_hidden_state: Tensor
    pooled: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


class _Embeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.max_positions, config.width)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class _TextTransformer(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(config)
        self.encoder = CLIPEncoder(config.layers, config.width, config.heads, config.intermediate,
                                   act=config.act, eps=config.layer_norm_eps, causal=True)
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """CLIP's text transformer: `input_ids [B, L]` -> tokens `[B, L, D]` and pooled `[B, D]` (CLIP Sec. 2.4).

    `clip_skip=n` stops `n` layers early and applies the final layer norm to that layer's output, as
    diffusers' `clip_skip` does (AUTOMATIC1111's "CLIP skip 2" is `clip_skip=1`).
    """

    def __init__(self, config: CLIPTextConfig | None = None) -> None:
        super().__init__()
        self.config = CLIPTextConfig() if config is None else config
        self.text_model = _TextTransformer(self.config)
        self.register_load_state_dict_pre_hook(_accept_checkpoint_layouts)
        if not self.text_model.embeddings.token_embedding.weight.is_meta:
            # On the meta device (layout checks, loaders that fill weights later) there is nothing to draw.
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """CLIP's initialisation (its released `initialize_parameters`): N(0, s) weights, zero biases."""
        c = self.config
        attn_std = c.width**-0.5
        proj_std = attn_std * (2 * c.layers) ** -0.5
        fc_std = (2 * c.width) ** -0.5
        tm = self.text_model
        nn.init.normal_(tm.embeddings.token_embedding.weight, std=0.02)
        nn.init.normal_(tm.embeddings.position_embedding.weight, std=0.01)
        tm.encoder.reset_parameters(attn_std=attn_std, proj_std=proj_std, fc_std=fc_std)
        tm.final_layer_norm.reset_parameters()

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        clip_skip: int = 0,
        output_hidden_states: bool = False,
    ) -> CLIPTextOutput:
        """Token states and pooled state of `input_ids [B, L]`, under an optional `attention_mask [B, L]`."""
        c = self.config
        if input_ids.ndim != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be integer token ids [B, L], got {tuple(input_ids.shape)} "
                             f"{input_ids.dtype}")
        if input_ids.shape[1] > c.max_positions:
            raise ValueError(f"input_ids has {input_ids.shape[1]} positions, more than max_positions="
                             f"{c.max_positions}; tokenize with max_length={c.max_positions}")
        if not 0 <= clip_skip < c.layers:
            raise ValueError(f"clip_skip must lie in 0 … {c.layers - 1}, got {clip_skip}")
        tm = self.text_model
        x = tm.embeddings(input_ids)
        mask = None if attention_mask is None else _causal_and_padding_mask(attention_mask, x)
        hidden_states = [x] if output_hidden_states else None
        for layer in tm.encoder.layers[: c.layers - clip_skip]:
            x = layer(x, mask)
            if hidden_states is not None:
                hidden_states.append(x)
        h = tm.final_layer_norm(x)
        pooled = h[torch.arange(h.shape[0], device=h.device), self._eos_positions(input_ids)]
        return CLIPTextOutput(h, pooled, None if hidden_states is None else tuple(hidden_states))

    def encode(self, input_ids: Tensor, *, clip_skip: int = 0) -> tuple[Tensor, Tensor]:
        """The frozen-encoder interface: `(tokens [B, L, D], pooled [B, D])`."""
        out = self(input_ids, clip_skip=clip_skip)
        return out.last_hidden_state, out.pooled

    def _eos_positions(self, input_ids: Tensor) -> Tensor:
        """`[B]` index of each row's EOS: its largest id, or the first `eos_token_id` when configured."""
        eos = self.config.eos_token_id
        if eos is None:
            return input_ids.argmax(dim=-1)
        is_eos = input_ids == eos
        if input_ids.device.type != "meta" and not bool(is_eos.any(dim=-1).all()):
            raise ValueError(f"every row of input_ids needs the EOS id {eos} (tokenize with BOS/EOS)")
        return is_eos.int().argmax(dim=-1)

    def num_parameters(self) -> int:
        """Number of parameters (123,060,480 for the SD 1.x text encoder)."""
        return sum(p.numel() for p in self.parameters())


def _causal_and_padding_mask(attention_mask: Tensor, x: Tensor) -> Tensor:
    """Boolean `[B, 1, L, L]`: query i may attend key j if j <= i and key j is not padding."""
    if attention_mask.shape != x.shape[:2]:
        expected, got = tuple(x.shape[:2]), tuple(attention_mask.shape)
        raise ValueError(f"attention_mask must be [B, L] = {expected}, not {got}")
    length = x.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    return causal[None, None] & attention_mask.to(device=x.device, dtype=torch.bool)[:, None, None, :]


_POSITION_IDS = ("embeddings.position_ids", "text_model.embeddings.position_ids")
_TOP_LEVEL = ("embeddings.", "encoder.", "final_layer_norm.")


def _accept_checkpoint_layouts(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: Any
) -> None:
    """Load-time key fixes: drop `position_ids` buffers, add the `text_model.` level some writers omit."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if rest in _POSITION_IDS:
            del state_dict[key]
        elif rest.startswith(_TOP_LEVEL):
            state_dict[prefix + "text_model." + rest] = state_dict.pop(key)
