"""`ddpm data`: write a generated built-in dataset out as an image folder (PNG + caption .txt sidecars)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._common import check_out_folder, non_negative_int, positive_int

HELP = "write a generated dataset (shapes) as an image folder with caption sidecars"
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
    p.set_defaults(func=run)
    return p


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
