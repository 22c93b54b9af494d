"""The cascade options of `ddpm txt2img` and `ddpm sample` (`--upscaler SR …`) and their run."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..config.choices import SAMPLER_NAMES
from ._common import finite_float, positive_int

__all__ = ["add_upscaler_args", "run_cascade"]


def add_upscaler_args(parser: argparse.ArgumentParser) -> None:
    """--upscaler (repeatable) and the settings of its stages."""
    g = parser.add_argument_group("cascades (a super-resolution model upscales each image)")
    g.add_argument("--upscaler", action="append", metavar="SR_MODEL",
                   help="an SR run folder or model file; repeat for more stages (16 -> 32 -> 64 …)")
    g.add_argument("--aug-level", type=finite_float, metavar="A",
                   help="the SR stages' noise-conditioning level in [0, 1] (default: each model's, 0.25)")
    g.add_argument("--upscaler-sampler", help=f"{', '.join(SAMPLER_NAMES)} for the SR stages "
                   "(default: each model's)")
    g.add_argument("--upscaler-steps", type=positive_int, help="sampling steps of the SR stages")
    g.add_argument("--upscaler-guidance", type=finite_float, metavar="SCALE",
                   help="guidance scale of the SR stages (default: each model's)")


def run_cascade(args: argparse.Namespace, base_options: Any, *, conditions: dict[str, Any]) -> int:
    """Sample `args.model` then each `args.upscaler`; one PNG per image with every stage's settings."""
    from ..io.images import save_generated
    from ..pipelines import Cascade, SamplingOptions, StageOptions
    from ._common import check_out_folder

    out = check_out_folder(args.out)
    cascade = Cascade([args.model, *args.upscaler])
    sr_options = SamplingOptions(sampler=args.upscaler_sampler, steps=args.upscaler_steps,
                                 guidance_scale=args.upscaler_guidance)
    sr = StageOptions(options=sr_options, aug_level=args.aug_level)
    plan = [StageOptions(options=base_options.replace(seed=None)), *[sr] * len(args.upscaler)]
    result = cascade.generate(args.num, seed=int(base_options.seed or 0), stages=plan,
                              batch_size=args.batch_size, progress=not args.quiet, **conditions)
    nrow = getattr(args, "nrow", None) or math.ceil(math.sqrt(args.num))
    _, grid_path = save_generated(out, result.images, result.metadata, grid_nrow=nrow)
    sizes = " -> ".join(f"{p.image_size}px" for p in cascade.stages)
    print(f"wrote {args.num} images ({sizes}) and {grid_path}")
    return 0
