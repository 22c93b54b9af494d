"""`ddpm sample`: generate images from a run folder or a model file; one PNG each (with reproduction
metadata) and a grid."""

from __future__ import annotations

import argparse
import math
from typing import Any

from . import UsageError
from ._cascade import add_upscaler_args, run_cascade
from ._common import (
    add_sampling_args,
    check_out_folder,
    load_pipeline,
    parse_class,
    positive_int,
    sampling_options,
)

HELP = "generate images from a trained model (PNGs with metadata and a grid)"
TRAJECTORY_ROWS, TRAJECTORY_COLUMNS = 8, 21


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample",
        help=HELP,
        description=HELP + ". Image i uses seed+i, so any image can be regenerated alone.",
        epilog="example: ddpm sample --model runs/demo --sampler dpmpp_2m --steps 20 --num 64 --class 3 "
        "--guidance 2 --out samples/",
    )
    p.add_argument("--model", required=True, help="a run folder (runs/NAME) or a model .safetensors file")
    p.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    p.add_argument(
        "--class", dest="cls", metavar="CLASS", help="class index or name (class-conditional models)"
    )
    p.add_argument(
        "--nrow", type=positive_int, help="images per grid row (default: one row per class, or square)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--trajectory", action="store_true",
                   help="also write trajectory.png: the states x_T … x_0 of the first images, one row each "
                   "(any sampler, Gaussian or cold)")  # fmt: skip
    add_sampling_args(p, num=64)
    add_upscaler_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = check_out_folder(args.out)  # before the model loads
    pipe = load_pipeline(args.model)
    import torch

    from ..evaluation import balanced_labels
    from ..io.images import png_metadata, save_generated, save_png

    options = sampling_options(args)
    cond = pipe.condition
    if cond == "text":
        raise ValueError(
            f"{args.model} is a text-conditional model; it is sampled from a prompt (ddpm txt2img)"
        )
    label = parse_class(args.cls, pipe.meta)
    labels = None
    num_classes = pipe.num_classes or 0
    if label is not None:
        labels = torch.full((args.num,), label, dtype=torch.long)
    elif cond == "class":
        labels = balanced_labels(args.num, num_classes)  # rows of classes 0, 1, 2, …

    if args.upscaler:
        if args.trajectory:
            raise UsageError("--trajectory shows one model's states; it does not combine with --upscaler")
        return run_cascade(args, options, conditions={"class_labels": labels} if labels is not None else {})
    cascade_only = [f"--{n.replace('_', '-')}" for n in ("aug_level", "upscaler_sampler", "upscaler_steps",
                                                         "upscaler_guidance") if getattr(args, n) is not None]
    if cascade_only:
        raise UsageError(f"{', '.join(cascade_only)} apply to the SR stages of a cascade; add --upscaler SR")
    path: list[torch.Tensor] | None = [] if args.trajectory else None
    images, metas = pipe.generate(
        args.num, class_labels=labels, options=options, batch_size=args.batch_size, progress=not args.quiet,
        trajectory=path,
    )
    if args.nrow:
        nrow = args.nrow
    elif labels is not None and label is None and args.num % num_classes == 0:
        nrow = args.num // num_classes
    else:
        nrow = math.ceil(math.sqrt(args.num))
    _, grid_path = save_generated(out, images, metas, grid_nrow=nrow)
    print(f"wrote {args.num} images and {grid_path}")
    if path is not None:
        shown = min(args.num, TRAJECTORY_ROWS)
        strip_meta = dict(metas[0], trajectory=f"states x_T … x_0 of images 0-{shown - 1}")
        strip = _trajectory(path, rows=shown)
        print(f"wrote {save_png(out / 'trajectory.png', strip, png_metadata(strip_meta))}")
    return 0


def _trajectory(states: list[Any], *, rows: int) -> Any:
    """A grid with one row per image: at most TRAJECTORY_COLUMNS states, evenly spread, first and last kept
    (Gaussian states are clamped to [-1, 1] for display)."""
    import torch

    from ..io.images import make_grid
    from ._cold import strip_levels

    picks = strip_levels(len(states) - 1, TRAJECTORY_COLUMNS)
    frames = torch.stack([states[k][:rows] for k in picks], dim=1)  # [rows, columns, C, H, W]
    return make_grid(frames.flatten(0, 1).clamp(-1, 1), nrow=len(picks))
