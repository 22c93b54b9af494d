"""`ddpm img2img`: re-draw an image for a prompt with a Stable Diffusion 1.x model (SDEdit)."""

from __future__ import annotations

import argparse
from typing import Any

from ._sd import add_sd_arguments, run_sd

HELP = "re-draw an image for a prompt with a Stable Diffusion model (PNGs with metadata)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "img2img",
        help=HELP,
        description=HELP + ". --strength 0 keeps the image, 1 ignores it; image i uses seed + i.",
        epilog='example: ddpm img2img --model sd15.safetensors --image in.png --strength 0.6 "oil painting"',
    )
    add_sd_arguments(p, image=True)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    return run_sd(args, "img2img")
