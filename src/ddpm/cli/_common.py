"""Helpers shared by the command modules (argument types, model loading, class parsing)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["positive_int", "non_negative_int", "add_sampling_args", "load_pipeline", "parse_class"]


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
    """--sampler/--steps/--guidance/--seed/--num/--batch-size, defaults from the model file where None."""
    g = parser.add_argument_group("sampling (defaults: the model file's own settings)")
    g.add_argument("--sampler", help="ddpm, ddim, plms, euler, euler_a, heun or dpmpp_2m")
    g.add_argument("--steps", type=positive_int, help="number of sampling steps")
    g.add_argument("--guidance", type=float, metavar="SCALE", help="classifier-free guidance scale (1 = off)")
    g.add_argument("--seed", type=non_negative_int, default=0, help="image i uses seed + i (default 0)")
    g.add_argument("--num", type=positive_int, default=num, help=f"number of images (default {num})")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per model call (default 64)")


def load_pipeline(model: str) -> Any:
    """The pipeline of a run folder or a model .safetensors file (`TextToImagePipeline` for text models,
    else `DiffusionPipeline`), with a clear error otherwise."""
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"no such run folder or model file: {model!r}")
    if path.is_file() and path.suffix != ".safetensors":
        raise ValueError(
            f"{model!r} is not a .safetensors model file; give a run folder or `ddpm export` output"
        )
    from ..io.model_file import read_model_meta
    from ..io.run_folder import run_model_file
    from ..pipelines import DiffusionPipeline, TextToImagePipeline

    meta = read_model_meta(run_model_file(path) if path.is_dir() else path)
    if (meta.get("conditioning") or {}).get("type") == "text":
        return TextToImagePipeline.load(path)
    return DiffusionPipeline.load(path)


def parse_class(text: str | None, meta: dict[str, Any]) -> int | None:
    """--class as an index or one of the model's class names -> index (None stays None)."""
    if text is None:
        return None
    cond = meta.get("conditioning") or {}
    if cond.get("type") != "class":
        raise ValueError(
            "--class needs a class-conditional model; this one is " + str(cond.get("type", "none"))
        )
    names = (meta.get("data") or {}).get("class_names") or []
    k = int(cond.get("num_classes") or len(names))
    if text in names:
        return names.index(text)
    try:
        index = int(text)
    except ValueError:
        index = -1
    if not 0 <= index < k:
        shown = ", ".join(names) if names else f"0 … {k - 1}"
        raise ValueError(f"unknown class {text!r}; this model knows {k} classes: {shown}")
    return index
