"""The Stable Diffusion side of `ddpm upscale`: `--model` is a `stable-diffusion-x4-upscaler` diffusers
folder, run by `ddpm.pipelines.sd_upscale.StableDiffusionUpscale`, one PNG out with the metadata that
regenerates it.

`ddpm upscale --model FOLDER IN.png --prompt "…" --noise-level 20 --steps 20 --out OUT.png`; the command
module dispatches here (`run_sd_upscale`) for an upscaler folder or single file (`is_sd_upscaler`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import UsageError
from ._common import check_out_file, finite_float, non_negative_int, positive_int

__all__ = ["add_sd_upscale_arguments", "is_sd_upscaler", "run_sd_upscale"]

_RUNTIME: dict[str, Any] = {"noise_level": 20, "device": "auto", "dtype": "auto", "negative_prompt": "",
                            "prompt": "", "force": False, "quiet": False}


def add_sd_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    """The x4 upscaler's options on `parser` (beside `--model`, the input image and `--out`)."""
    g = parser.add_argument_group("Stable Diffusion x4 upscaler")
    g.add_argument("--prompt", default="", help="what the image shows (guides the added detail)")
    g.add_argument("--negative-prompt", default="", metavar="TEXT", help="negative prompt")
    g.add_argument("--noise-level", type=non_negative_int, default=20,
                   help="noise added to the input first, 0 … 350 (default 20; more = more invented detail)")
    g.add_argument("--steps", type=positive_int, help="sampling steps (default 20)")
    g.add_argument("--guidance", type=finite_float, metavar="SCALE", help="CFG scale (default 9)")
    g.add_argument("--seed", type=non_negative_int, help="default: random")
    g.add_argument("--max-input-pixels", type=positive_int, metavar="N",
                   help="refuse inputs above N pixels (default 262144 = 512x512, a 2048x2048 output)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    g.add_argument("--dtype", default="auto", help="float32, float16, bfloat16 (default fp16 on GPU)")


def is_sd_upscaler(path: str | Path) -> bool:
    """Whether `path` is an SD x4 upscaler, by content: a diffusers folder whose model_index.json names
    StableDiffusionUpscalePipeline, or a single file holding a noise-level table and an OpenCLIP text
    tower (a `.ckpt` pickle cannot be told without loading it: the loader then says what it holds)."""
    path = Path(path)
    if path.is_dir():
        try:
            index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
            return index.get("_class_name") == "StableDiffusionUpscalePipeline"
        except (OSError, ValueError, AttributeError):
            return False
    from ._common import model_kind

    try:
        kind = model_kind(path)
        if kind == "pickle":
            return True
        if kind != "sd":
            return False
        from ..io.checkpoint import read_safetensors_header

        keys = read_safetensors_header(path)
    except (OSError, ValueError):
        return False
    return "model.diffusion_model.label_emb.weight" in keys and any(
        k.startswith("cond_stage_model.model.") for k in keys)


def _opt(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name, None)
    return _RUNTIME.get(name) if value is None else value


def run_sd_upscale(args: argparse.Namespace) -> int:
    """Upscale `args.image` 4x with the x4 upscaler (folder or file) `args.model` into the PNG `args.out`;
    paths, the image and the options are checked before torch is imported and the model loaded."""
    model = Path(args.model)
    if not model.exists():
        raise FileNotFoundError(f"no such x4 upscaler folder or file: {args.model!r}")
    if not is_sd_upscaler(model):
        raise UsageError(f"{args.model!r} is not an SD x4 upscaler: give the stable-diffusion-x4-upscaler "
                         "diffusers folder (model_index.json naming StableDiffusionUpscalePipeline) or the "
                         "release's x4-upscaler-ema single file")
    noise_level = _opt(args, "noise_level")
    if isinstance(noise_level, bool) or not isinstance(noise_level, int) or noise_level < 0:
        raise UsageError(f"--noise-level must be an integer >= 0 (20 is usual), got {noise_level!r}")
    size = _check_image(args.image)
    out = check_out_file(args.out, force=bool(_opt(args, "force")), suffix=".png")
    import torch

    from ..io.images import png_metadata, save_png
    from ..pipelines.sd_upscale import DEFAULT_MAX_INPUT_PIXELS, StableDiffusionUpscale

    limit = _opt(args, "max_input_pixels") or DEFAULT_MAX_INPUT_PIXELS
    if size[0] * size[1] > limit:  # the pipeline says the same; here before the model loads
        raise UsageError(f"{args.image!r} is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, above the "
                         f"limit of {limit} (the output would be {4 * size[0]}x{4 * size[1]}); shrink or "
                         "crop it, or raise --max-input-pixels if the device has the memory")
    pipe = StableDiffusionUpscale.load(model, device=_opt(args, "device"), dtype=_opt(args, "dtype"),
                                       max_input_pixels=limit)
    quiet = bool(_opt(args, "quiet"))
    if not quiet:
        print(f"upscale: {size[0]}x{size[1]} -> {pipe.scale * size[0]}x{pipe.scale * size[1]}, noise level "
              f"{noise_level}", file=sys.stderr)
    with torch.inference_mode():
        result = pipe.upscale(
            args.image, prompt=_opt(args, "prompt"), negative_prompt=_opt(args, "negative_prompt"),
            noise_level=noise_level, steps=getattr(args, "steps", None),
            guidance_scale=getattr(args, "guidance", None), seed=getattr(args, "seed", None),
            progress=not quiet,
        )  # fmt: skip
    save_png(out, result.images[0], png_metadata(result.metadata[0]))
    print(out)
    return 0


def _check_image(name: str) -> tuple[int, int]:
    """(width, height) of the input from its header, after checking that it opens as an image."""
    from PIL import Image

    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no such input image: {name!r}")
    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError as e:
        raise UsageError(f"{name!r} is too large to read as an image ({str(e).rstrip('.')}); the upscaler "
                         "takes inputs of up to about 512 pixels a side") from e
    except OSError as e:
        raise UsageError(f"cannot read {name!r} as an image: {e}") from e
