"""`ddpm data`: write a generated built-in dataset out as an image folder (PNG + caption .txt sidecars), or
degrade a folder of images with a cold-diffusion degradation (`ddpm data degrade`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._common import check_out_folder, non_negative_int, positive_int

HELP = "write a generated dataset (shapes) as an image folder, or degrade images (blur, mask, …)"
# The splits of ddpm.data.shapes.SPLITS, spelled out so that `ddpm --help` needs no numpy/torch import.
SHAPES_SPLITS = ("train", "test_seen", "test_heldout", "test", "all")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "data",
        help=HELP,
        description=HELP + ". The folder loads back as a captioned dataset: give its path as data.dataset in "
        "a training config, or to ddpm.data.load_dataset.",
    )
    sub = p.add_subparsers(title="datasets", dest="dataset", metavar="<dataset>", required=True)
    s = sub.add_parser(
        "shapes",
        help="one or two coloured shapes per image, captioned ('a small red circle above a blue square')",
        description="Draw N images of the captioned shapes dataset into DIR as 000000.png + 000000.txt, …; "
        "item i depends only on (seed, split, i). Splits: train (held-out combinations excluded), "
        "test_seen / test (other images of the train combinations), test_heldout (only held-out "
        "combinations), all (every combination).",
        epilog="example: ddpm data shapes --num 20000 --out data/shapes --size 32",
    )
    s.add_argument("--num", type=positive_int, required=True, metavar="N", help="number of images")
    s.add_argument("--out", required=True, metavar="DIR", help="folder to write (created; must be empty)")
    s.add_argument("--size", type=positive_int, default=32, help="image side in pixels, >= 16 (default 32)")
    s.add_argument("--seed", type=non_negative_int, default=0, help="dataset seed (default 0)")
    s.add_argument("--split", choices=SHAPES_SPLITS, default="train", help="split to draw (default train)")
    s.add_argument("--overwrite", action="store_true", help="write into DIR even if it is not empty")
    s.set_defaults(func=run)
    _add_degrade(sub)
    return p


DEGRADE_HELP = "degrade images with a cold-diffusion degradation at one level (and show every level)"


def _add_degrade(sub: Any) -> None:
    from ..config.choices import DEGRADATION_NAMES

    d = sub.add_parser(
        "degrade",
        help=DEGRADE_HELP,
        description=DEGRADE_HELP + " (a built-in one, or a cold model's own). Writes OUT/NAME.png for each "
        "image of IN, with the degradation and level in its metadata (what `ddpm restore` reads), and with "
        "--strip NAME-strip.png: the image at levels 0 … T side by side.",
        epilog="example: ddpm data degrade --degradation blur --level 10 --strip digits/ blurred/",
    )
    d.add_argument("input", metavar="IN", help="an image or a folder of images")
    d.add_argument("output", metavar="OUT", help="folder to write (created)")
    which = d.add_mutually_exclusive_group(required=True)
    which.add_argument("--degradation", choices=DEGRADATION_NAMES, help="a built-in degradation")
    which.add_argument("--model", help="a cold-diffusion run folder or model file: its own degradation")
    d.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="an option of the degradation (repeatable), e.g. levels=40 or centre=random")
    d.add_argument("--level", type=non_negative_int, help="the level t, 0 … T (default T)")
    d.add_argument("--size", type=positive_int, help="square the images to SIZE pixels first")
    d.add_argument("--seed", type=non_negative_int, default=0,
                   help="image i's random parts (mask centre, noise) use seed + i (default 0)")
    d.add_argument("--strip", action="store_true", help="also write each image at levels 0 … T")
    d.set_defaults(func=run_degrade)  # fmt: skip


def run_degrade(args: argparse.Namespace) -> int:
    import torch

    from ..degradations import bind, degradation_config, make_degradation
    from ..io.images import make_grid, png_metadata, save_png
    from ._cold import image_generators, parse_options, read_images, strip_levels

    if args.model is not None:
        degradation = _model_degradation(args.model, args.option)
    else:
        degradation = make_degradation(args.degradation, **parse_options(args.option))
    level = degradation.levels if args.level is None else args.level
    names, x0 = read_images(args.input, size=args.size, channels=None)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    config = degradation_config(degradation)
    with torch.no_grad():
        for i, name in enumerate(names):
            image = x0[i : i + 1]
            D = bind(degradation, image, generator=image_generators(args.seed + i, 1))
            meta = {"degradation": config, "level": level, "seed": args.seed + i, "source": name}
            save_png(out / f"{name}.png", D(image, level)[0], png_metadata(meta))
            if args.strip:
                row = torch.cat([D(image, t) for t in strip_levels(degradation.levels)])
                save_png(out / f"{name}-strip.png", make_grid(row, nrow=row.shape[0]), png_metadata(meta))
    print(f"wrote {len(names)} images degraded by {config['name']} at level {level} of {degradation.levels} "
          f"to {out}")  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    if args.dataset != "shapes":
        raise ValueError(f"unknown dataset {args.dataset!r}; `ddpm data` writes: shapes")
    if args.size < 16:
        raise ValueError(f"--size must be at least 16 pixels to draw tellable shapes, got {args.size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; give a folder to write the images into")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--out {str(out)!r} is not empty; choose an empty folder or pass --overwrite")
    check_out_folder(out)
    from dataclasses import asdict

    from PIL import Image, PngImagePlugin

    from ..data.shapes import ShapesDataset

    data = ShapesDataset(split=args.split, image_size=args.size, num=args.num, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(args.num - 1)))
    for i in range(args.num):
        scene = data.scene(i)
        info = PngImagePlugin.PngInfo()
        info.add_text("caption", scene.caption)
        info.add_text("ddpm", json.dumps({
            "dataset": "shapes", "split": args.split, "seed": args.seed, "index": i, "image_size": args.size,
            "scene": asdict(scene),
        }))  # fmt: skip
        name = f"{i:0{digits}d}"
        Image.fromarray(data.pixels(i)).save(out / f"{name}.png", pnginfo=info)
        (out / f"{name}.txt").write_text(scene.caption + "\n", encoding="utf-8")
    print(
        f"wrote {args.num} shapes images ({args.split}, {args.size}x{args.size}, seed {args.seed}) "
        f"with caption sidecars to {out}"
    )
    return 0


def _model_degradation(model: str, options: list[str] | None) -> Any:
    """The degradation a cold model file (or run folder) restores."""
    from ..io.model_file import read_model_meta
    from ..io.model_meta import ModelMeta
    from ..io.run_folder import run_model_file
    from ..pipelines.cold import cold_parts

    if options:
        raise ValueError("--option configures a built-in --degradation; a --model brings its own settings")
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"no such run folder or model file: {model!r}")
    file = run_model_file(path) if path.is_dir() else path
    meta = ModelMeta.from_dict(read_model_meta(file), source=str(file))
    if meta.diffusion is None:
        raise ValueError(f"{model} is an autoencoder; it has no degradation to show")
    parts = cold_parts(meta.diffusion)
    if parts is None:
        raise ValueError(f"{model} is a Gaussian diffusion model; it has no degradation to show")
    return parts.degradation
