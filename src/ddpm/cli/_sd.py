"""The Stable Diffusion side of `ddpm txt2img`, `ddpm img2img` and `ddpm inpaint`: shared options, running
`ddpm.pipelines.stable_diffusion.StableDiffusion`, and PNGs with the web UIs' "parameters" text chunk.

`ddpm txt2img` dispatches here (`run_sd_txt2img`) when `--model` is an SD checkpoint (`is_sd_model`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from ..config.choices import SAMPLER_NAMES, SD_DEFAULTS, SPACINGS
from ._common import non_negative_int, positive_int, sampling_options

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
        parser.add_argument("--strength", type=float, default=default,
                            help=f"how far to move from the image, 0 … 1 (default {default})")
    if mask:
        parser.add_argument("--mask", required=True, help="mask image: white = repaint, black = keep")
    parser.add_argument("--out", default="outputs", help="folder for the PNGs (default outputs/)")
    g = parser.add_argument_group("sampling")
    g.add_argument("--negative", default="", metavar="TEXT", help="negative prompt")
    g.add_argument("--steps", type=positive_int, help=f"sampling steps (default {SD_DEFAULTS['steps']})")
    g.add_argument("--guidance", type=float, metavar="SCALE",
                   help=f"CFG scale (default {SD_DEFAULTS['guidance_scale']})")
    g.add_argument("--sampler", help=f"{', '.join(SAMPLER_NAMES)} (default {SD_DEFAULTS['sampler']})")
    g.add_argument("--karras", action="store_true", help="Karras sigmas (\"DPM++ 2M Karras\")")
    g.add_argument("--spacing", choices=SPACINGS,
                   help="timestep spacing (default: the model's, leading for SD 1.x)")
    g.add_argument("--seed", type=non_negative_int, help="image i uses seed + i (default: random)")
    g.add_argument("--size", type=parse_size, metavar="WxH",
                   help="image size, e.g. 512x768 (default {width}x{height}; img2img/inpaint: the image's)"
                   .format(**SD_DEFAULTS))
    g.add_argument("--num", type=positive_int, default=1, help="number of images (default 1)")
    g.add_argument("--batch-size", type=positive_int, help="images per model call (default: all)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM's noise (0 = deterministic)")
    g.add_argument("--clip-skip", type=non_negative_int, help="text-encoder layers to skip (default 0)")
    r = parser.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    r.add_argument("--dtype", default="auto", help="float32, float16, bfloat16 (default fp16 on GPU)")
    r.add_argument("--vae-tile", type=non_negative_int, metavar="CELLS",
                   help="decode in windows of CELLS latent cells (default: 64 past 768 pixels; 0: never)")
    r.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU; slow first call)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def is_sd_model(path: str | Path) -> bool:
    """Whether `path` is a diffusers SD folder or a single file with an SD UNet (`model.diffusion_model.`)."""
    path = Path(path)
    if path.is_dir():
        return (path / "model_index.json").is_file()
    if not path.is_file():
        return False
    if path.suffix == ".ckpt":
        return True
    from ..io.checkpoint import read_safetensors_header

    try:
        header = read_safetensors_header(path)
    except (ValueError, OSError):
        return False
    return any(k.startswith("model.diffusion_model.") for k in header)


def _opt(args: argparse.Namespace, name: str) -> Any:
    """`args.name`, or the runtime default when the calling parser lacks the option or left it None."""
    value = getattr(args, name, None)
    return _RUNTIME.get(name) if value is None else value


def run_sd(args: argparse.Namespace, mode: str) -> int:
    """Generate with `mode` in txt2img / img2img / inpaint and write one PNG per image into `--out`."""
    from ..io.images import save_generated
    from ..pipelines.stable_diffusion import StableDiffusion

    model = Path(args.model)
    if not model.exists():
        raise FileNotFoundError(f"no such SD model folder or file: {args.model!r}")
    pipe = StableDiffusion.load(model, device=_opt(args, "device"), dtype=_opt(args, "dtype"),
                                compile=bool(_opt(args, "compile")), vae_tile=_opt(args, "vae_tile"))
    kw: dict[str, Any] = dict(
        negative_prompt=_opt(args, "negative") or "", options=sampling_options(args),
        num_images=_opt(args, "num"), batch_size=_opt(args, "batch_size"), progress=not _opt(args, "quiet"),
    )  # fmt: skip
    size = _opt(args, "size")
    if size is not None:
        kw["width"], kw["height"] = size
    prompt = args.prompt or ""
    if mode == "txt2img":
        result = pipe.txt2img(prompt, **kw)
    elif mode == "img2img":
        result = pipe.img2img(args.image, prompt, strength=args.strength, **kw)
    elif mode == "inpaint":
        result = pipe.inpaint(args.image, args.mask, prompt, strength=args.strength, **kw)
    else:
        raise ValueError(f"unknown SD mode {mode!r}")
    out = Path(_opt(args, "out"))
    start = _next_index(out) if out.is_dir() else 0
    paths, _ = save_generated(out, result.images, result.metadata, start=start, name="{index:05d}-{seed}.png")
    for path in paths:
        print(path)
    note = result.metadata[0].get("prompt_note")
    if note:
        print(f"note: {note}")
    return 0


def run_sd_txt2img(args: argparse.Namespace) -> int:
    """`ddpm txt2img` for an SD checkpoint (the text helper's command dispatches here)."""
    return run_sd(args, "txt2img")


def _next_index(folder: Path) -> int:
    """One past the largest `NNNNN-…png` number in `folder`, so a new run never overwrites an old image."""
    numbers = [int(p.name[:5]) for p in folder.glob("*.png") if p.name[:5].isdigit()]
    return max(numbers, default=-1) + 1
