"""`ddpm txt2img`: images from a prompt with a text-to-image model; one PNG each (with the prompt, negative
prompt, seed, sampler, steps, guidance, size and model hash in its metadata) and a grid.

The model kind is read from the file: a Stable Diffusion 1.x checkpoint (diffusers folder, or a single file
with an SD UNet) goes to the SD pipeline (cli/_sd.py); a ddpm model file whose "ddpm" metadata says
"conditioning": text goes to `PixelPipeline`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ._common import add_sampling_args, non_negative_int, sampling_options
from ._sd import parse_size

HELP = "generate images from a text prompt (PNGs with metadata and a grid)"
_SD_ONLY = ("size", "clip_skip", "device", "dtype", "vae_tile", "compile")

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "txt2img",
        help=HELP,
        description=HELP + ". Image i uses seed+i, so any image can be regenerated alone. An empty prompt "
        "samples the unconditional model.",
        epilog='example: ddpm txt2img --model runs/shapes_txt2img "a red circle above a blue square" '
        '--negative "a green triangle" --guidance 5 --steps 20 --sampler dpmpp_2m --seed 0 --num 4 '
        "--out out/",
    )
    p.add_argument("prompt", nargs="?", default="", help='the prompt (default "": unconditional)')
    p.add_argument("--model", required=True, help="a run folder (runs/NAME) or a model .safetensors file")
    p.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    p.add_argument(
        "--negative", default="", metavar="PROMPT", help="negative prompt (replaces the empty one)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampling_args(p, num=4)
    sd = p.add_argument_group("Stable Diffusion checkpoints only (defaults: SD 1.x's)")
    sd.add_argument("--size", type=parse_size, metavar="WxH", help="e.g. 512x768 (default 512x512)")
    sd.add_argument("--clip-skip", type=non_negative_int, help="text-encoder layers to skip")
    sd.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    sd.add_argument("--dtype", help="float32, float16, bfloat16 (default fp16 on GPU)")
    sd.add_argument("--vae-tile", type=non_negative_int, metavar="CELLS", help="tiled VAE decoding window")
    sd.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU; slow first call)")
    p.set_defaults(func=run)
    return p


def model_kind(path: str | Path) -> str:
    """ "ddpm-<conditioning>" ("ddpm-text", "ddpm-class", …) of a run folder or ddpm model file."""
    from ..io.model_file import read_meta

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run folder or model file: {str(path)!r}")
    if path.is_dir():
        from ..io.run_folder import run_model_file

        path = run_model_file(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{str(path)!r} is neither a ddpm model (a run folder or a .safetensors from `ddpm export`) "
            "nor a Stable Diffusion 1.x checkpoint (.ckpt/.safetensors or a diffusers folder)"
        )
    return "ddpm-" + read_meta(path).condition


def run(args: argparse.Namespace) -> int:
    from ..io.images import save_generated
    from ..pipelines import PixelPipeline
    from ._sd import is_sd_model, run_sd_txt2img

    if is_sd_model(args.model):
        return run_sd_txt2img(args)
    sd_only = [f"--{n.replace('_', '-')}" for n in _SD_ONLY if getattr(args, n) not in (None, False)]
    if sd_only:
        raise ValueError(f"{', '.join(sd_only)} apply to Stable Diffusion checkpoints only; drop them")
    kind = model_kind(args.model)
    if kind != "ddpm-text":
        raise ValueError(
            f"{args.model} is a {kind[len('ddpm-') :]}-conditional model, not a text-to-image one; sample it "
            "with `ddpm sample`"
        )
    options = sampling_options(args)
    pipe = PixelPipeline.load(args.model)
    images, metas = pipe.generate(
        args.num, prompts=args.prompt, negative_prompt=args.negative, options=options,
        batch_size=args.batch_size, progress=not args.quiet,
    )  # fmt: skip
    _, grid_path = save_generated(args.out, images, metas, grid_nrow=math.ceil(math.sqrt(args.num)))
    print(f"wrote {args.num} images and {grid_path}")
    return 0
