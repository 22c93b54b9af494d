"""`ddpm txt2img`: images from a prompt with a text-to-image model; one PNG each (with the prompt, negative
prompt, seed, sampler, steps, guidance, size and model hash in its metadata) and a grid.

The model kind is read from the file: a ddpm model file (its "ddpm" metadata says "conditioning": text) goes
to `TextToImagePipeline`; a Stable Diffusion checkpoint is recognised by its tensor names and refused for
now with a clear message.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ._common import add_sampling_args

HELP = "generate images from a text prompt (PNGs with metadata and a grid)"

# Key prefixes that mark a Stable Diffusion single-file checkpoint (original and diffusers layouts).
_SD_MARKERS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")


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
    p.add_argument("--eta", type=float, default=0.0, help="stochasticity of ddim (0 = deterministic)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampling_args(p, num=4)
    p.set_defaults(func=run)
    return p


def model_kind(path: str | Path) -> str:
    """ "ddpm-<conditioning>" ("ddpm-text", "ddpm-class", …) of a run folder or model file; a Stable Diffusion
    checkpoint is recognised and refused (not supported yet)."""
    from ..io.model_file import read_model_meta

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run folder or model file: {str(path)!r}")
    if path.is_dir():
        from ..training.export import run_model_file

        path = run_model_file(path)
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise ValueError(
            f"{path.name} looks like a Stable Diffusion checkpoint: txt2img does not support those "
            "yet; give a ddpm text-to-image model (a run folder or a .safetensors from `ddpm export`)"
        )
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{str(path)!r} is not a .safetensors model file; give a run folder or `ddpm export` output"
        )
    try:
        meta = read_model_meta(path)
    except ValueError:
        if _is_stable_diffusion(path):
            raise ValueError(
                f"{path.name} is a Stable Diffusion checkpoint: txt2img does not support those yet; give a "
                "ddpm text-to-image model (a run folder or a .safetensors from `ddpm export`)"
            ) from None
        raise
    return "ddpm-" + str((meta.get("conditioning") or {}).get("type") or "none")


def _is_stable_diffusion(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith(_SD_MARKERS) for k in f.keys())
    except Exception:  # not a readable safetensors file at all: let the metadata error speak
        return False


def run(args: argparse.Namespace) -> int:
    from ..io.images import make_grid, png_metadata, save_png
    from ..pipelines.text import TextToImagePipeline

    kind = model_kind(args.model)
    if kind != "ddpm-text":
        raise ValueError(
            f"{args.model} is a {kind[len('ddpm-') :]}-conditional model, not a text-to-image one; sample it "
            "with `ddpm sample`"
        )
    pipe = TextToImagePipeline.load(args.model)
    images, metas = pipe.generate(
        args.num, prompts=args.prompt, negative_prompt=args.negative, seed=args.seed,
        guidance_scale=args.guidance, sampler=args.sampler, steps=args.steps, eta=args.eta,
        batch_size=args.batch_size, progress=not args.quiet,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (image, m) in enumerate(zip(images, metas)):
        save_png(out / f"{i:05d}-seed{args.seed + i}.png", image, png_metadata(m))
    nrow = math.ceil(math.sqrt(args.num))
    seeds = f"{args.num} images, seeds {args.seed}-{args.seed + args.num - 1}"
    grid_meta = dict(metas[0], grid=seeds, nrow=nrow)
    grid_path = save_png(out / "grid.png", make_grid(images, nrow), png_metadata(grid_meta))
    print(f"wrote {args.num} images and {grid_path}")
    return 0
