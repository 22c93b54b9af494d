"""`ddpm upscale`: enlarge an image with a super-resolution model.

The model kind is read from the path's content first (`_common.model_kind`): a ddpm SR model (a run folder
or model file whose UNet has a `low_res` input) goes to `PixelPipeline.upscale`; the Stable Diffusion x4
upscaler (its diffusers folder or single file) goes to `_sd_upscale.run_sd_upscale` with `--prompt`,
`--negative`, `--noise-level`, `--steps`, `--guidance` and `--seed`. For a ddpm SR model an input whose
size is not the model's low-res size is resized to it (antialiased bilinear, the training downsampling;
non-square inputs centre-cropped) with a warning that names both sizes.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from . import UsageError
from ._common import (
    add_sampling_args,
    check_out_file,
    finite_float,
    model_kind,
    non_negative_int,
    parse_class,
    positive_int,
    sampling_options,
)

HELP = "upscale an image with a super-resolution model (a PNG with metadata)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "upscale",
        help=HELP,
        description=HELP + ". The low-res input is noised to --aug-level of the model's schedule first "
        "(noise-conditioning augmentation, as the model was trained), then the model samples the "
        "high-res image given it.",
        epilog="example: ddpm upscale --model runs/shapes-sr-16-32 small.png --out big.png --aug-level 0.2",
    )
    p.add_argument("image", metavar="IN.png", help="the low-res image")
    p.add_argument("--model", required=True, help="an SR run folder (runs/NAME), a model .safetensors file, "
                   "or the SD x4 upscaler (a stable-diffusion-x4-upscaler diffusers folder or single file)")
    p.add_argument("--out", required=True, metavar="OUT.png", help="the PNG to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--aug-level", type=finite_float, metavar="A",
                   help="noise-conditioning level in [0, 1] of the schedule (default: the model's, 0.25)")
    p.add_argument("--prompt", help="the prompt (text-conditional SR models)")
    p.add_argument("--negative", metavar="PROMPT", help="negative prompt (text-conditional SR models)")
    p.add_argument("--class", dest="cls", metavar="CLASS", help="class index or name (class-conditional SR)")
    add_sampling_args(p, num=1)
    g = p.add_argument_group("Stable Diffusion x4 upscaler (also --prompt, --negative, --steps, --guidance, "
                             "--seed)")
    g.add_argument("--noise-level", type=non_negative_int, default=None,
                   help="noise added to the input first, 0 … 350 (default 20; more = more invented detail)")
    g.add_argument("--max-input-pixels", type=positive_int, metavar="N",
                   help="refuse inputs above N pixels (default 262144 = 512x512, a 2048x2048 output)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    g.add_argument("--dtype", default="auto", help="float32, float16, bfloat16 (default fp16 on GPU)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    kind = model_kind(args.model)  # a missing or unreadable path fails here, before options are judged
    if kind in ("sd", "pickle"):
        from ._sd_upscale import is_sd_upscaler, run_sd_upscale

        if is_sd_upscaler(args.model):
            return _sd(args, run_sd_upscale)
    if kind == "sd":
        raise UsageError(f"{args.model} is a Stable Diffusion text-to-image checkpoint, not an upscaler; "
                         "`ddpm upscale` takes the SD x4 upscaler or a ddpm SR model (trained with "
                         "[model] low_res)")
    if args.noise_level is not None or args.max_input_pixels is not None:
        raise UsageError("--noise-level and --max-input-pixels apply to the SD x4 upscaler; a ddpm SR model "
                         "takes --aug-level")
    if kind == "pickle":
        raise UsageError(f"{args.model!r} is a pickled checkpoint, not a ddpm model (a run folder or a "
                         ".safetensors from `ddpm export`); it was not unpickled")
    if args.num != 1:
        raise UsageError("--num does not apply to `ddpm upscale`: it writes one image per input")
    out = check_out_file(args.out, force=args.force, suffix=".png")
    from ..data.decode import read_image
    from ..data.transforms import fit_square, match_channels, to_signed
    from ..io.images import png_metadata, save_png
    from ..pipelines import PixelPipeline

    options = sampling_options(args)
    pipe = PixelPipeline.load(args.model)
    lr = pipe.low_res
    if lr is None:
        raise UsageError(f"{args.model} is not a super-resolution model (its UNet has no low_res input); "
                         "sample it with `ddpm sample` or `ddpm txt2img`")
    if args.aug_level is not None:
        pipe._aug_level(args.aug_level)  # an out-of-range level fails before the image is read
    pixels = match_channels(read_image(args.image), int(pipe.unet.config.in_channels))
    h, w = pixels.shape[-2:]
    if (h, w) != (lr.size, lr.size):
        warnings.warn(f"{args.image} is {w}x{h}; this model upscales {lr.size}x{lr.size} images to "
                      f"{pipe.image_size}x{pipe.image_size}, so it was resized to {lr.size}x{lr.size}"
                      + (" (centre-cropped to a square)" if h != w else ""), UserWarning, stacklevel=1)
        pixels = fit_square(pixels, lr.size)
    label = parse_class(args.cls, pipe.meta)
    text = pipe.condition == "text"
    if not text and (args.prompt is not None or args.negative is not None):
        raise UsageError(f"{args.model} is not text-conditional: --prompt and --negative do not apply")
    images, metas = pipe.upscale(
        to_signed(pixels)[None], aug_level=args.aug_level, options=options, batch_size=args.batch_size,
        prompts=(args.prompt or "") if text else None, class_labels=label, progress=False,
        negative_prompt=(args.negative or "") if text else None,
    )  # fmt: skip
    meta = dict(metas[0], upscaled=str(args.image))
    print(f"wrote {save_png(out, images[0], png_metadata(meta))} ({lr.size}px -> {pipe.image_size}px)")
    return 0


def _sd(args: argparse.Namespace, run_sd_upscale: Any) -> int:
    """The x4 upscaler's run: options of ddpm SR models refused by name, the shared ones passed on."""
    given = [flag for flag, value in (("--aug-level", args.aug_level), ("--class", args.cls),
                                      ("--sampler", args.sampler), ("--spacing", args.spacing),
                                      ("--karras", args.karras or None), ("--eta", args.eta or None))
             if value is not None]  # fmt: skip
    if given:
        raise UsageError(f"{', '.join(given)} do not apply to the SD x4 upscaler (it samples with the DDIM "
                         "schedule its folder names); use --noise-level, --steps, --guidance and --seed")
    if args.num != 1:
        raise UsageError("--num does not apply to `ddpm upscale`: it writes one image per input")
    args.negative_prompt = args.negative or ""
    return run_sd_upscale(args)
