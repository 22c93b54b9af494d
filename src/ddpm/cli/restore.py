"""`ddpm restore`: restore degraded images (deblur, inpaint the model's mask, …) with a cold model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._common import check_out_folder, load_pipeline, non_negative_int, positive_int

HELP = "restore degraded images with a cold-diffusion model (deblurring, inpainting, super-resolution)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "restore",
        help=HELP,
        description=HELP + ". Each image of --in is taken as degraded by the model's own degradation at "
        "--level, or at the level (and seed) its PNG metadata names (as `ddpm data degrade` writes them), "
        "else at the model's last level T; the restorations go to --out under the same names.",
        epilog="example: ddpm data degrade --degradation blur --level 10 digits/ blurred/ && "
        "ddpm restore --model runs/cold-blur-digits --in blurred/ --out restored/",
    )
    p.add_argument("--model", required=True, help="a cold-diffusion run folder or model .safetensors file")
    p.add_argument("--in", dest="input", required=True, metavar="DEGRADED_DIR", help="an image or a folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the restored PNGs (created)")
    p.add_argument("--level", type=non_negative_int,
                   help="the images' degradation level (default: their metadata's, else T)")
    p.add_argument("--sampler", choices=("cold", "cold_naive", "cold_direct"),
                   help="cold (Algorithm 2, default), cold_naive (Algorithm 1) or cold_direct (one step)")
    p.add_argument("--steps", type=positive_int, help="levels to visit on the way down (default: every one)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="image i's random degradation parts use seed + i where its metadata has none")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per model call (default 64)")
    p.set_defaults(func=run)  # fmt: skip
    return p


def _recorded(path: Path) -> dict[str, Any]:
    """The `ddpm data degrade` record of a PNG ({} for other images)."""
    from ..io.images import read_png_metadata

    if path.suffix.lower() != ".png":
        return {}
    try:
        record = json.loads(read_png_metadata(path).get("ddpm", "{}"))
    except ValueError:
        return {}
    return record if isinstance(record, dict) and "level" in record else {}


def run(args: argparse.Namespace) -> int:
    out = check_out_folder(args.out)  # before the model loads
    pipe = load_pipeline(args.model)
    import torch

    from ..degradations import degradation_config
    from ..io.images import png_metadata, save_png
    from ..pipelines import SamplingOptions
    from ._cold import read_images

    if pipe.cold is None:
        raise ValueError(f"{args.model} is a Gaussian diffusion model; `ddpm restore` needs a cold-diffusion "
                         "model (trained with [diffusion] degradation = …)")  # fmt: skip
    size = pipe.image_size
    channels = int(pipe.unet.config.in_channels)
    names, images = read_images(args.input, size=size, channels=channels)
    root = Path(args.input)
    files = {p.stem: p for p in ([root] if root.is_file() else root.iterdir())}
    config = degradation_config(pipe.cold.degradation)
    levels, seeds = [], []
    for i, name in enumerate(names):
        record = _recorded(files[name])
        if record.get("degradation") not in (None, config):
            raise ValueError(f"{files[name]} was degraded by {record['degradation']}, but the model restores "
                             f"{config}; degrade the images with the model's own settings")  # fmt: skip
        recorded = int(record.get("level", pipe.cold.degradation.levels))
        levels.append(args.level if args.level is not None else recorded)
        seeds.append(int(record.get("seed", args.seed + i)))
    out.mkdir(parents=True, exist_ok=True)
    options = SamplingOptions(sampler=args.sampler, steps=args.steps)
    restored = torch.empty_like(images)
    for level in sorted(set(levels)):
        rows = [i for i, lv in enumerate(levels) if lv == level]
        restored[rows] = pipe.restore(
            images[rows], level=level, seeds=[seeds[i] for i in rows], options=options,
            batch_size=args.batch_size,
        )
    sampler = args.sampler or pipe.meta.sampling.sampler
    for i, name in enumerate(names):
        meta = {"restored": name, "level": levels[i], "seed": seeds[i], "sampler": sampler,
                "degradation": config, "model": pipe.name, "model_hash": pipe.model_hash}  # fmt: skip
        save_png(out / f"{name}.png", restored[i], png_metadata(meta))
    print(f"restored {len(names)} images (levels {sorted(set(levels))}) into {out}")
    return 0
