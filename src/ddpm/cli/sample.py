"""`ddpm sample`: generate images from a run folder or a model file; one PNG each (with reproduction
metadata) and a grid."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ._common import (
    add_sampling_args,
    check_out_folder,
    load_pipeline,
    parse_class,
    positive_int,
    sampling_options,
)

HELP = "generate images from a trained model (PNGs with metadata and a grid)"


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
    add_sampling_args(p, num=64)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = check_out_folder(args.out)  # before the model loads
    pipe = load_pipeline(args.model)
    import torch

    from ..evaluation import balanced_labels
    from ..io.images import save_generated

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

    images, metas = pipe.generate(
        args.num, class_labels=labels, options=options, batch_size=args.batch_size, progress=not args.quiet
    )
    if args.nrow:
        nrow = args.nrow
    elif labels is not None and label is None and args.num % num_classes == 0:
        nrow = args.num // num_classes
    else:
        nrow = math.ceil(math.sqrt(args.num))
    _, grid_path = save_generated(out, images, metas, grid_nrow=nrow)
    print(f"wrote {args.num} images and {grid_path}")
    return 0
