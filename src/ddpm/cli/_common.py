"""Helpers shared by the command modules (argument types, model loading, class parsing)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config.choices import SAMPLER_NAMES, SPACINGS

__all__ = ["positive_int", "non_negative_int", "add_sampling_args", "sampling_options", "load_pipeline",
           "parse_class"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def add_sampling_args(parser: argparse.ArgumentParser, *, num: int) -> None:
    """--sampler/--steps/--spacing/--karras/--guidance/--eta/--seed/--num/--batch-size (None: the model's)."""
    g = parser.add_argument_group("sampling (defaults: the model file's own settings)")
    g.add_argument("--sampler", help=f"{', '.join(SAMPLER_NAMES)} (default: the model's)")
    g.add_argument("--steps", type=positive_int, help="number of sampling steps")
    g.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default: the model's)")
    g.add_argument("--karras", action="store_true", help='Karras sigmas ("DPM++ 2M Karras")')
    g.add_argument("--guidance", type=float, metavar="SCALE", help="classifier-free guidance scale (1 = off)")
    g.add_argument("--eta", type=float, default=0.0, help="stochasticity of ddim (0 = deterministic)")
    g.add_argument("--seed", type=non_negative_int, default=0, help="image i uses seed + i (default 0)")
    g.add_argument("--num", type=positive_int, default=num, help=f"number of images (default {num})")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per model call (default 64)")


def sampling_options(args: argparse.Namespace) -> Any:
    """The `SamplingOptions` of the parsed sampling arguments (those a parser lacks stay unset)."""
    from ..pipelines import SamplingOptions

    names = {"sampler": "sampler", "steps": "steps", "spacing": "spacing", "guidance_scale": "guidance",
             "seed": "seed", "clip_skip": "clip_skip"}
    fields = {k: getattr(args, a) for k, a in names.items() if getattr(args, a, None) is not None}
    return SamplingOptions(karras=bool(getattr(args, "karras", False)), eta=float(getattr(args, "eta", 0.0)),
                           **fields)


def load_pipeline(model: str) -> Any:
    """The `PixelPipeline` of a run folder or a model .safetensors file, with a clear error otherwise."""
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"no such run folder or model file: {model!r}")
    if path.is_file() and path.suffix != ".safetensors":
        raise ValueError(
            f"{model!r} is not a .safetensors model file; give a run folder or `ddpm export` output"
        )
    from ..pipelines import PixelPipeline

    return PixelPipeline.load(path)


def parse_class(text: str | None, meta: Any) -> int | None:
    """--class as an index or one of the model's class names (`meta`: a `ModelMeta`) -> index."""
    if text is None:
        return None
    if meta.condition != "class":
        raise ValueError(f"--class needs a class-conditional model; this one is {meta.condition}")
    names = meta.class_names or []
    if text in names:
        return names.index(text)
    try:
        index = int(text)
    except ValueError:
        index = -1
    if not 0 <= index < len(names):
        raise ValueError(f"unknown class {text!r}; this model knows {len(names)} classes: {', '.join(names)}")
    return index
