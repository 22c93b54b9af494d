"""`ddpm inpaint`: repaint the white part of a mask for a prompt with a Stable Diffusion 1.x model."""

from __future__ import annotations

import argparse
from typing import Any

from ._sd import add_sd_arguments, run_sd

HELP = "repaint the masked part of an image with a Stable Diffusion model (PNGs with metadata)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inpaint",
        help=HELP,
        description=HELP + ". Inpainting checkpoints use their 9-channel UNet; ordinary ones blend latents.",
        epilog='example: ddpm inpaint --model sd15-inpainting.safetensors --image a.png --mask m.png "a cat"',
    )
    add_sd_arguments(p, image=True, mask=True)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    return run_sd(args, "inpaint")
