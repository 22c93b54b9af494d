"""`ddpm txt2img`: images from a prompt with a text-to-image model (or a cascade: the base, then
`--upscaler` super-resolution models); one PNG each (with the prompt, negative
prompt, seed, sampler, steps, guidance, size and model hash in its metadata) and a grid.

The model kind is read from the file's content (`_common.model_kind`), before any option is judged: a
Stable Diffusion 1.x checkpoint (diffusers folder, a single file with an SD UNet, or a pickled checkpoint,
which the SD loader reads without running code) goes to the SD pipeline (cli/_sd.py); a ddpm model file
whose "ddpm" metadata says "conditioning": text goes to `PixelPipeline`; an unCLIP prior (run.task =
"unclip_prior") with `--decoder DECODER` goes to `pipelines.unclip.Unclip`: the prior samples an image
embedding per seed (`--prior-steps`, `--prior-guidance`; defaults the prior file's), the decoder draws the
image from it (the sampling options apply to the decoder).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from . import UsageError
from ._cascade import add_upscaler_args, run_cascade
from ._common import (
    add_sampling_args,
    check_out_folder,
    finite_float,
    model_kind,
    non_negative_int,
    positive_int,
    sampling_options,
)
from ._sd import parse_size

HELP = "generate images from a text prompt (PNGs with metadata and a grid)"
_SD_ONLY = ("size", "clip_skip", "device", "dtype", "vae_tile", "compile")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "txt2img",
        help=HELP,
        description=HELP + ". Image i uses seed+i, so any image can be regenerated alone. An empty prompt "
        "samples the unconditional model.",
        epilog='example: ddpm txt2img --model runs/shapes_txt2img "a red circle above a blue square" '
        '--negative "a green triangle" --guidance 5 --steps 20 --sampler dpmpp_2m --seed 0 --num 4 '
        "--out out/",
    )
    p.add_argument("prompt", nargs="?", default="", help='the prompt (default "": unconditional)')
    p.add_argument("--model", required=True, help="a run folder (runs/NAME) or a model .safetensors file "
                   "(an unCLIP prior with --decoder)")
    p.add_argument("--decoder", metavar="DECODER", help="unCLIP: the decoder (run folder or model file) that "
                   "draws images from the embeddings the --model prior samples")
    p.add_argument("--prior-steps", type=positive_int, metavar="N", help="unCLIP: the prior's sampling steps")
    p.add_argument("--prior-guidance", type=finite_float, metavar="SCALE",
                   help="unCLIP: the prior's classifier-free guidance scale")
    p.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    p.add_argument(
        "--negative", default="", metavar="PROMPT", help="negative prompt (replaces the empty one)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--candidates", type=positive_int, metavar="N",
                   help="with --rerank: generate N images (seeds seed … seed+N-1) and keep the --num best")
    p.add_argument("--rerank", metavar="MODEL",
                   help="score candidates against the prompt with this CLIP folder or contrastive model file "
                   "(DALL·E's reranking); scores go into each PNG's metadata")
    add_sampling_args(p, num=4)
    add_upscaler_args(p)
    sd = p.add_argument_group("Stable Diffusion checkpoints only (defaults: SD 1.x's)")
    sd.add_argument("--size", type=parse_size, metavar="WxH",
                    help="e.g. 512x768 (default: the model's, 512x512 for SD 1.x)")
    sd.add_argument("--clip-skip", type=non_negative_int, help="text-encoder layers to skip")
    sd.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    sd.add_argument("--dtype", help="float32, float16, bfloat16 (default fp16 on GPU)")
    sd.add_argument("--vae-tile", type=non_negative_int, metavar="CELLS", help="tiled VAE decoding window")
    sd.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU; slow first call)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ._sd import run_sd_txt2img

    kind = model_kind(args.model)  # a missing or unreadable path fails here, before options are judged
    check_rerank_args(args)
    if kind == "ddpm-prior" or args.decoder is not None:
        return run_unclip(args, kind)
    unclip_only = [f"--{n.replace('_', '-')}" for n in ("prior_steps", "prior_guidance")
                   if getattr(args, n) is not None]
    if unclip_only:
        raise UsageError(f"{', '.join(unclip_only)} apply to an unCLIP prior "
                         "(--model PRIOR --decoder DECODER)")
    if kind in ("sd", "pickle"):
        if args.upscaler:
            raise UsageError("--upscaler chains ddpm pixel models; a Stable Diffusion checkpoint cannot be "
                             "the base of a cascade")
        return run_sd_txt2img(args)
    sd_only = [f"--{n.replace('_', '-')}" for n in _SD_ONLY if getattr(args, n) not in (None, False)]
    if sd_only:
        raise UsageError(f"{', '.join(sd_only)} apply to Stable Diffusion checkpoints only, and {args.model} "
                         "is a ddpm model; drop them")
    if kind != "ddpm-text":
        raise UsageError(
            f"{args.model} is a {kind[len('ddpm-') :]}-conditional model, not a text-to-image one; sample it "
            "with `ddpm sample`"
        )
    if args.upscaler:
        return run_cascade(args, sampling_options(args),
                           conditions={"prompts": args.prompt, "negative_prompt": args.negative})
    cascade_only = [f"--{n.replace('_', '-')}" for n in ("aug_level", "upscaler_sampler", "upscaler_steps",
                                                         "upscaler_guidance") if getattr(args, n) is not None]
    if cascade_only:
        raise UsageError(f"{', '.join(cascade_only)} apply to the SR stages of a cascade; add --upscaler SR")
    out = check_out_folder(args.out)
    from ..io.images import save_generated
    from ..pipelines import PixelPipeline

    options = sampling_options(args)
    scorer = None
    if args.rerank:
        from ..pipelines.rerank import load_scorer

        scorer = load_scorer(args.rerank)  # before generating: a bad reranker fails in seconds
    pipe = PixelPipeline.load(args.model)
    images, metas = pipe.generate(
        args.candidates or args.num, prompts=args.prompt, negative_prompt=args.negative, options=options,
        batch_size=args.batch_size, progress=not args.quiet,
    )  # fmt: skip
    if scorer is not None:
        from ..pipelines.rerank import rerank

        images, metas = rerank(images, metas, scorer, keep=args.num)
        print("kept " + ", ".join(f"seed {m['seed']} ({m['rerank']['score']:.2f})" for m in metas)
              + f" of {args.candidates} candidates")
    _, grid_path = save_generated(out, images, metas, grid_nrow=math.ceil(math.sqrt(args.num)))
    print(f"wrote {args.num} images and {grid_path}")
    return 0


def run_unclip(args: argparse.Namespace, kind: str) -> int:
    """prior (--model) -> image embeddings -> decoder (--decoder) -> PNGs."""
    if kind != "ddpm-prior":
        raise UsageError(f"--decoder is for unCLIP: --model must then be an unCLIP prior (run.task = "
                         f"'unclip_prior'), and {args.model} is not one")
    if args.decoder is None:
        raise UsageError(f"{args.model} is an unCLIP prior: it makes image embeddings, not images; add "
                         "--decoder DECODER (a model trained with data.condition = 'clip_image')")
    dkind = model_kind(args.decoder)
    if dkind != "ddpm-clip_image":
        raise UsageError(f"--decoder {args.decoder} is not an unCLIP decoder ({dkind}); train one with "
                         "configs/shapes_unclip_decoder.toml")
    given = [f"--{n.replace('_', '-')}" for n in ("rerank", "upscaler", *_SD_ONLY)
             if getattr(args, n) not in (None, False, [])]
    if given:
        raise UsageError(f"{', '.join(given)} do not apply to unCLIP (prior -> decoder); drop them")
    if args.negative:
        raise UsageError("--negative does not apply to unCLIP: the decoder's guidance drops the image "
                         "embedding, the prior's the prompt")
    out = check_out_folder(args.out)
    from ..io.images import save_generated
    from ..pipelines.unclip import Unclip

    pipe = Unclip.load(args.model, args.decoder)
    images, metas = pipe.txt2img(args.prompt, args.num, options=sampling_options(args),
                                 prior_steps=args.prior_steps, prior_guidance=args.prior_guidance,
                                 batch_size=args.batch_size, progress=not args.quiet)
    _, grid_path = save_generated(out, images, metas, grid_nrow=math.ceil(math.sqrt(args.num)))
    print(f"wrote {args.num} images and {grid_path} (unCLIP: prior -> decoder)")
    return 0


def check_rerank_args(args: argparse.Namespace) -> None:
    """--candidates and --rerank go together, and there are at least --num candidates."""
    if (args.candidates is None) != (args.rerank is None):
        raise UsageError("--candidates N and --rerank MODEL go together: generate N, keep the --num best")
    if args.rerank is not None and getattr(args, "upscaler", None):
        raise UsageError("--rerank scores one-stage generations; it is not applied to cascades (--upscaler): "
                         "rerank the base model's images, or leave --upscaler out")
    if args.candidates is not None and args.candidates < args.num:
        raise UsageError(f"--candidates {args.candidates} is fewer than --num {args.num}; generate at least "
                         "as many candidates as images to keep")
