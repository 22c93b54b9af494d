"""ddpm.conditioning: what a model is conditioned on, as modules trained with it or frozen beside it.

`Conditioner` turns a batch into the UNet's keyword arguments (`class_labels`, `context`), with the null
condition for classifier-free guidance; `ClassConditioner` holds class labels, `WordTextConditioner` a
word tokenizer and the small text encoder. Training builds one with `make_conditioner(config, dataset)`;
pipelines rebuild a trained text encoder from a model file with `text_conditioner_from_meta`.
A super-resolution model's low-res input and its noise-conditioning augmentation: `low_res.py`.
See ARCHITECTURE.md.
"""

from .base import (
    CONDITIONERS,
    ClassConditioner,
    Conditioner,
    Unconditional,
    make_conditioner,
    register_conditioner,
)
from .low_res import alpha_bar_at, augment, blur, check_level, downsample, upsample
from .text import (
    TEXT_DEFAULTS,
    TEXT_ENCODERS,
    TextConditioner,
    WordTextConditioner,
    text_conditioner_from_meta,
)

__all__ = [
    "Conditioner",
    "Unconditional",
    "ClassConditioner",
    "TextConditioner",
    "WordTextConditioner",
    "CONDITIONERS",
    "TEXT_DEFAULTS",
    "TEXT_ENCODERS",
    "make_conditioner",
    "register_conditioner",
    "text_conditioner_from_meta",
    "alpha_bar_at",
    "augment",
    "blur",
    "check_level",
    "downsample",
    "upsample",
]
