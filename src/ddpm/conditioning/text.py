"""Caption conditioning (`data.condition = "text"`): a tokenizer and a text encoder whose per-token states
reach the UNet as `context [B, L, D]` (cross-attention, Rombach et al. 2022, Sec. 3.3).

A caption dropped for classifier-free guidance (Ho & Salimans 2022) becomes the empty prompt "", so the
unconditional model is the model of the empty prompt and a pipeline needs nothing beyond the encoder to
guide. Everything above the encoder (UNet, samplers, guidance, pipelines) sees only `encode_prompts(prompts)
-> context`; a frozen pretrained encoder (CLIP for the Stable Diffusion layout) plugs in as another
`TextConditioner` with its own tokenizer and `requires_grad_(False)` weights, registered in `TEXT_ENCODERS`
under the `kind` its model-file metadata names.

Settings come from the config's [text] section where it defines them, else from `TEXT_DEFAULTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..models.small_text_encoder import SmallTextConfig, SmallTextEncoder
from ..text.word_tokenizer import WordTokenizer
from .base import Conditioner, register_conditioner

__all__ = [
    "TextConditioner",
    "WordTextConditioner",
    "TEXT_DEFAULTS",
    "TEXT_ENCODERS",
    "text_conditioner_from_meta",
    "register",
]

# [text] settings and their defaults: the encoder of configs/shapes_txt2img.toml.
TEXT_DEFAULTS: dict[str, Any] = {
    "context_length": 16, "width": 64, "layers": 2, "heads": 4, "mlp_ratio": 2, "causal": False,
}
_PREVIEW_ROWS = 4


class TextConditioner(Conditioner):
    """Base of text conditioners: `encode_prompts(prompts) -> context [B, L, D]`; "" is the null prompt."""

    kind = "text"
    export_prefix = "text_encoder."

    def __init__(self) -> None:
        super().__init__()
        self.preview_prompts: list[str] = []

    @property
    def context_dim(self) -> int:
        raise NotImplementedError

    def encode_prompts(
        self, prompts: Sequence[str], *, device: torch.device | None = None, warn: bool = True
    ) -> Tensor:
        """Token states `[B, L, D]` of `prompts` (on `device`, default the encoder's)."""
        raise NotImplementedError

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Warn about what the encoder cannot read in full (truncated prompts, unknown words)."""
        with torch.no_grad():
            self.encode_prompts(list(prompts), warn=True)

    def encoder_meta(self) -> dict[str, Any]:
        """The "text_encoder" entry of the model file's "conditioning" section (`kind` picks the loader)."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Any], drop: Tensor | None) -> dict[str, Tensor]:
        captions = batch.get("caption")
        if captions is None:
            raise ValueError(
                "data.condition = 'text' needs a captioned dataset (caption sidecars or 'shapes')"
            )
        captions = list(captions)
        if drop is not None:
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        return {"context": self.encode_prompts(captions, device=batch["image"].device, warn=False)}

    def unet_fields(self) -> dict[str, Any]:
        return {"context_dim": self.context_dim}

    @torch.no_grad()
    def preview(self, num: int, *, device: torch.device) -> tuple[int, dict | None, dict | None, int]:
        """`_PREVIEW_ROWS` training captions, one per row, max(1, num // rows) images each."""
        prompts = self.preview_prompts[:_PREVIEW_ROWS] or [""]
        per_row = max(1, num // len(prompts))
        texts = [p for p in prompts for _ in range(per_row)]
        cond = self.encode_prompts(texts, device=device, warn=False)
        uncond = self.encode_prompts([""] * len(texts), device=device, warn=False)
        return len(texts), {"context": cond}, {"context": uncond}, per_row

    def meta(self) -> dict[str, Any]:
        return {"type": "text", "num_classes": None, "text_encoder": self.encoder_meta()}


class WordTextConditioner(TextConditioner):
    """A word-level tokenizer over the training captions and a `SmallTextEncoder`, trained with the UNet."""

    def __init__(self, tokenizer: WordTokenizer, config: SmallTextConfig):
        super().__init__()
        if config.context_length != tokenizer.context_length or config.vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"text encoder (vocab {config.vocab_size}, context {config.context_length}) does not match "
                f"its "
                f"tokenizer (vocab {tokenizer.vocab_size}, context {tokenizer.context_length})"
            )
        self.tokenizer = tokenizer
        self.encoder = SmallTextEncoder(config)

    @property
    def context_dim(self) -> int:
        return self.encoder.width

    def encode_prompts(
        self, prompts: Sequence[str], *, device: torch.device | None = None, warn: bool = True
    ) -> Tensor:
        tok = self.tokenizer(list(prompts), warn=warn)
        dev = device if device is not None else self.encoder.position_embedding.device
        return self.encoder(tok.input_ids.to(dev), tok.attention_mask.to(dev))

    def check_prompts(self, prompts: Sequence[str]) -> None:
        self.tokenizer(list(prompts), warn=True)

    def encoder_meta(self) -> dict[str, Any]:
        return {
            "kind": "word_transformer",
            "tokenizer": self.tokenizer.to_dict(),
            "config": self.encoder.config.to_dict(),
            "preview_prompts": list(self.preview_prompts),
        }


def _word_from_meta(meta: dict[str, Any]) -> WordTextConditioner:
    cond = WordTextConditioner(
        WordTokenizer.from_dict(meta["tokenizer"]), SmallTextConfig.from_dict(meta["config"])
    )
    cond.preview_prompts = list(meta.get("preview_prompts") or [])
    return cond


# kind -> builder(text_encoder metadata) -> TextConditioner with freshly initialised weights.
TEXT_ENCODERS: dict[str, Callable[[dict[str, Any]], TextConditioner]] = {"word_transformer": _word_from_meta}


def text_conditioner_from_meta(meta: dict[str, Any]) -> TextConditioner:
    """The (untrained) conditioner a model file's "conditioning.text_encoder" entry describes."""
    if not isinstance(meta, dict) or "kind" not in meta:
        raise ValueError(
            "the model file's conditioning section has no text_encoder description; it may be damaged"
        )
    kind = meta["kind"]
    if kind not in TEXT_ENCODERS:
        raise ValueError(
            f"text encoder kind {kind!r} is not supported by this ddpm (known: {sorted(TEXT_ENCODERS)})"
        )
    return TEXT_ENCODERS[kind](meta)


def _setting(config: Any, key: str) -> Any:
    value = getattr(getattr(config, "text", None), key, None)
    return TEXT_DEFAULTS[key] if value is None else value


def _text_factory(config: Any, dataset: Any) -> WordTextConditioner:
    captions = getattr(dataset, "captions", None)
    if not captions or any(c is None for c in captions):
        raise ValueError(
            f"data.condition = 'text' needs a caption for every image; {config.data.dataset!r} lacks "
            "some "
            "(add .txt caption sidecars, or use the 'shapes' dataset)"
        )
    n = int(_setting(config, "context_length"))
    tok = WordTokenizer.from_captions(captions, context_length=n)
    enc = SmallTextConfig(
        vocab_size=tok.vocab_size,
        context_length=n,
        width=int(_setting(config, "width")),
        layers=int(_setting(config, "layers")),
        heads=int(_setting(config, "heads")),
        mlp_ratio=int(_setting(config, "mlp_ratio")),
        causal=bool(_setting(config, "causal")),
    )
    cond = WordTextConditioner(tok, enc)
    cond.preview_prompts = list(dict.fromkeys(captions))[:_PREVIEW_ROWS]
    return cond


def register() -> None:
    """Make `data.condition = "text"` build a `WordTextConditioner` (idempotent)."""
    register_conditioner("text", _text_factory)


register()
