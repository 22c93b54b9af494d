"""`ddpm variations`: unCLIP image variations (DALL·E 2, Ramesh et al. 2022, Sec. 3.1). The input image is
encoded by the decoder's frozen contrastive image encoder (the one recorded in its metadata), and the
decoder draws --num images from that one embedding, image i from seed + i: what the embedding keeps
(colours, shapes) stays, what it leaves out varies. One PNG each, whose metadata records the source image
and the embedding, and a grid.

An input of another size is resized to the model's (centre-cropped to a square first) with a warning.
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any

from . import UsageError
from ._common import add_sampling_args, check_out_folder, model_kind

HELP = "image variations with an unCLIP decoder: encode an image, decode it with different seeds"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "variations",
        help=HELP,
        description=HELP + " (PNGs with metadata and a grid).",
        epilog="example: ddpm variations --model runs/shapes_unclip_decoder in.png --num 4 --out out/var",
    )
    p.add_argument("image", metavar="IN.png", help="the image to vary")
    p.add_argument("--model", required=True,
                   help="an unCLIP decoder: run folder or model file (data.condition = 'clip_image')")
    p.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampling_args(p, num=4)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    kind = model_kind(args.model)  # a missing or unreadable path fails here
    if kind != "ddpm-clip_image":
        what = "a Stable Diffusion checkpoint" if kind in ("sd", "pickle") else \
            f"a ddpm {kind[len('ddpm-'):]} model"
        raise UsageError(f"{args.model} is {what}, not an unCLIP decoder (train one with "
                         "configs/shapes_unclip_decoder.toml: data.condition = 'clip_image')")
    out = check_out_folder(args.out)
    from ..data.decode import read_image
    from ..data.transforms import fit_square, match_channels, to_signed
    from ..io.images import save_generated
    from ..pipelines import PixelPipeline
    from ._common import sampling_options

    options = sampling_options(args)
    pipe = PixelPipeline.load(args.model)
    size = pipe.image_size
    pixels = match_channels(read_image(args.image), 3)
    h, w = pixels.shape[-2:]
    if (h, w) != (size, size):
        warnings.warn(f"{args.image} is {w}x{h}; the decoder's encoder reads {size}x{size} images, so it was "
                      f"resized to {size}x{size}" + (" (centre-cropped to a square)" if h != w else ""),
                      UserWarning, stacklevel=1)
        pixels = fit_square(pixels, size)
    images, metas = pipe.variations(to_signed(pixels), args.num, options=options, batch_size=args.batch_size,
                                    progress=not args.quiet)
    for m in metas:
        m["variation_of"] = str(args.image)
    _, grid = save_generated(out, images, metas, grid_nrow=math.ceil(math.sqrt(args.num)))
    print(f"wrote {args.num} variations of {args.image} and {grid}")
    return 0
