"""The Stable Diffusion side of `ddpm txt2img`, `ddpm img2img` and `ddpm inpaint`: shared options, running
`ddpm.pipelines.stable_diffusion.StableDiffusion`, and PNGs with the web UIs' "parameters" text chunk.

`ddpm txt2img` dispatches here (`run_sd_txt2img`) when `--model` is an SD checkpoint (`is_sd_model`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from ..config.choices import SAMPLER_NAMES, SD_DEFAULTS, SPACINGS
from . import UsageError
from ._common import (
    check_out_folder,
    finite_float,
    model_kind,
    non_negative_float,
    non_negative_int,
    positive_int,
    sampling_options,
)

__all__ = ["add_sd_arguments", "is_sd_model", "parse_size", "run_sd", "run_sd_txt2img"]

# What a parser without an option gets (the sampling defaults are SD_DEFAULTS, filled by the pipeline).
_RUNTIME: dict[str, Any] = {"num": 1, "device": "auto", "dtype": "auto", "compile": False, "out": "outputs"}
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """argparse type: "WIDTHxHEIGHT" (e.g. 512x768, as the web UIs write Size) -> (width, height)."""
    m = _SIZE.match(text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x768, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def add_sd_arguments(parser: argparse.ArgumentParser, *, image: bool = False, mask: bool = False) -> None:
    """The prompt and the SD options (`--model`, `--negative`, `--steps`, … `--out`) on `parser`."""
    parser.add_argument("prompt", nargs="?", default="", help="the prompt; (word:1.3), (word), [word] weigh")
    parser.add_argument("--model", required=True, help="SD 1.x diffusers folder or .safetensors/.ckpt file")
    if image:
        parser.add_argument("--image", required=True, help="the input image (any mode and size)")
        default = SD_DEFAULTS["strength"]["inpaint" if mask else "img2img"]
        parser.add_argument("--strength", type=finite_float, default=default,
                            help=f"how far to move from the image, 0 … 1 (default {default})")
    if mask:
        parser.add_argument("--mask", required=True, help="mask image: white = repaint, black = keep")
    parser.add_argument("--out", default="outputs", help="folder for the PNGs (default outputs/)")
    g = parser.add_argument_group("sampling")
    g.add_argument("--negative", default="", metavar="TEXT", help="negative prompt")
    g.add_argument("--steps", type=positive_int, help=f"sampling steps (default {SD_DEFAULTS['steps']})")
    g.add_argument("--guidance", type=finite_float, metavar="SCALE",
                   help=f"CFG scale (default {SD_DEFAULTS['guidance_scale']})")
    g.add_argument("--sampler", help=f"{', '.join(SAMPLER_NAMES)} (default {SD_DEFAULTS['sampler']})")
    g.add_argument("--karras", action="store_true", help="Karras sigmas (\"DPM++ 2M Karras\")")
    g.add_argument("--exponential", action="store_true",
                   help="exponential sigmas, log-evenly spaced (\"DPM++ 2M SDE Exponential\")")
    g.add_argument("--spacing", choices=SPACINGS,
                   help="timestep spacing (default: the model's, leading for SD 1.x)")
    g.add_argument("--seed", type=non_negative_int, help="image i uses seed + i (default: random)")
    g.add_argument("--size", type=parse_size, metavar="WxH",
                   help="image size, e.g. 512x768 (default: the model's, 512x512 for SD 1.x; "
                        "img2img/inpaint: the image's)")
    g.add_argument("--num", type=positive_int, default=1, help="number of images (default 1)")
    g.add_argument("--batch-size", type=positive_int, help="images per model call (default: all)")
    g.add_argument("--eta", type=non_negative_float, default=0.0, help="DDIM's noise (0 = deterministic)")
    g.add_argument("--clip-skip", type=non_negative_int, help="text-encoder layers to skip (default 0)")
    r = parser.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    r.add_argument("--dtype", default="auto", help="float32, float16, bfloat16 (default fp16 on GPU)")
    r.add_argument("--vae-tile", type=non_negative_int, metavar="CELLS",
                   help="decode in windows of CELLS latent cells (default: 64 past 768 pixels; 0: never)")
    r.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU; slow first call)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def is_sd_model(path: str | Path) -> bool:
    """Whether `path` may be an SD checkpoint: a diffusers folder, a single file with an SD UNet
    (`model.diffusion_model.`) or a pickled checkpoint (the SD loader then reads it safely), by content."""
    try:
        return model_kind(path) in ("sd", "pickle")
    except (ValueError, OSError):
        return False


def _opt(args: argparse.Namespace, name: str) -> Any:
    """`args.name`, or the runtime default when the calling parser lacks the option or left it None."""
    value = getattr(args, name, None)
    return _RUNTIME.get(name) if value is None else value


def run_sd(args: argparse.Namespace, mode: str) -> int:
    """Generate with `mode` in txt2img / img2img / inpaint and write one PNG per image into `--out`; the
    paths, images and options are checked first, before torch is imported and the model loaded."""
    model = Path(args.model)
    if not model.exists():
        raise FileNotFoundError(f"no such SD model folder or file: {args.model!r}")
    if mode != "txt2img" and not 0.0 < args.strength <= 1.0:
        raise UsageError(f"--strength must lie in (0, 1] (1 = ignore the image), got {args.strength}")
    image_size = _check_images(args, mode)  # before the model loads: a bad image or output fails in seconds
    out = check_out_folder(_opt(args, "out"))
    from ..io.images import save_generated
    from ..pipelines.stable_diffusion import StableDiffusion

    scorer = None
    if getattr(args, "rerank", None):
        from ..pipelines.rerank import load_scorer

        scorer = load_scorer(args.rerank)
    pipe = StableDiffusion.load(model, device=_opt(args, "device"), dtype=_opt(args, "dtype"),
                                compile=bool(_opt(args, "compile")), vae_tile=_opt(args, "vae_tile"))
    kw: dict[str, Any] = dict(
        negative_prompt=_opt(args, "negative") or "", options=sampling_options(args),
        num_images=getattr(args, "candidates", None) or _opt(args, "num"),
        batch_size=_opt(args, "batch_size"), progress=not _opt(args, "quiet"),
    )  # fmt: skip
    size = _opt(args, "size")
    if size is not None:
        kw["width"], kw["height"] = size
    if kw["progress"]:
        print(_plan(pipe, mode, size or image_size or (pipe.default_size,) * 2, kw), file=sys.stderr)
    prompt = args.prompt or ""
    if mode == "txt2img":
        result = pipe.txt2img(prompt, **kw)
    elif mode == "img2img":
        result = pipe.img2img(args.image, prompt, strength=args.strength, **kw)
    elif mode == "inpaint":
        result = pipe.inpaint(args.image, args.mask, prompt, strength=args.strength, **kw)
    else:
        raise ValueError(f"unknown SD mode {mode!r}")
    images, metadata = result.images, result.metadata
    if scorer is not None:
        from ..pipelines.rerank import rerank

        images, metadata = rerank(images, metadata, scorer, keep=_opt(args, "num"))
    start = _next_index(out) if out.is_dir() else 0
    paths, _ = save_generated(out, images, metadata, start=start, name="{index:05d}-{seed}.png")
    for path in paths:
        print(path)
    note = result.metadata[0].get("prompt_note")
    if note:
        print(f"note: {note}")
    return 0


def _check_images(args: argparse.Namespace, mode: str) -> tuple[int, int] | None:
    """(width, height) of `--image` from its header (None for txt2img), after checking that it and `--mask`
    open as images; the pixels are decoded later."""
    from PIL import Image

    size = None
    for option, what in (("image", "an image"), ("mask", "a mask")):
        name = getattr(args, option, None)
        if mode == "txt2img" or name is None:
            continue
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no such {option} file: {name!r}")
        try:
            with Image.open(path) as im:
                size = size or im.size
        except Image.DecompressionBombError as e:
            raise UsageError(f"{name!r} is too large to read as {what} ({str(e).rstrip('.')}); shrink it "
                             "to a few thousand pixels a side (the model works at about 512)") from e
        except OSError as e:
            raise UsageError(f"cannot read {name!r} as {what}: {e}") from e
    return size


_SLOW_ATTENTION = 16384  # positions in one attention: 128x128 latents, SD 1.x at 1024 pixels


def _plan(pipe: Any, mode: str, size: tuple[int, int], kw: dict[str, Any]) -> str:
    """One line on the job about to run: its size and what it costs (UNet calls, the widest attention)."""
    m = pipe.size_multiple
    width, height = (max(m, round(side / m) * m) for side in size)  # as the pipeline rounds an image's size
    f = pipe.vae.config.downsampling_factor * min(pipe.unet.config.attention_resolutions or (1,))
    positions = (height // f) * (width // f)
    options = pipe.resolve(kw["options"])
    calls = options.steps * kw["num_images"] * (1 if float(options.guidance_scale) == 1.0 else 2)
    line = (f"{mode}: {kw['num_images']} image(s) of {width}x{height}, {options.steps} steps: up to {calls} "
            f"UNet calls, attention over {positions} positions")
    if positions > _SLOW_ATTENTION:
        line += f"; that is slow, the model's own size is {pipe.default_size}x{pipe.default_size} (--size)"
    return line


def run_sd_txt2img(args: argparse.Namespace) -> int:
    """`ddpm txt2img` for an SD checkpoint (the text helper's command dispatches here)."""
    return run_sd(args, "txt2img")


def _next_index(folder: Path) -> int:
    """One past the largest `NNNNN-…png` number in `folder`, so a new run never overwrites an old image."""
    numbers = [int(p.name[:5]) for p in folder.glob("*.png") if p.name[:5].isdigit()]
    return max(numbers, default=-1) + 1
