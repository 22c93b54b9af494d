"""Helpers shared by the command modules: argument types, checks of outputs before any work, telling
model kinds apart by content, model loading, class parsing."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

from ..config.choices import SAMPLER_NAMES, SPACINGS
from . import UsageError

__all__ = [
    "positive_int", "non_negative_int", "finite_float", "non_negative_float", "add_sampling_args",
    "sampling_options", "check_out_folder", "check_out_file", "model_kind", "load_pipeline", "parse_class",
]  # fmt: skip



def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_sampling_args(parser: argparse.ArgumentParser, *, num: int) -> None:
    """--sampler/--steps/--spacing/--karras/--exponential/--guidance/--eta/--seed/--num/--batch-size
    (None: the model's)."""
    g = parser.add_argument_group("sampling (defaults: the model file's own settings)")
    g.add_argument("--sampler", help=f"{', '.join(SAMPLER_NAMES)} (default: the model's)")
    g.add_argument("--steps", type=positive_int, help="number of sampling steps")
    g.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default: the model's)")
    g.add_argument("--karras", action="store_true", help='Karras sigmas ("DPM++ 2M Karras")')
    g.add_argument("--exponential", action="store_true",
                   help='exponential sigmas, log-evenly spaced ("DPM++ 2M SDE Exponential")')  # fmt: skip
    g.add_argument("--guidance", type=finite_float, metavar="SCALE",
                   help="classifier-free guidance scale (1 = off)")
    g.add_argument("--eta", type=non_negative_float, default=0.0,
                   help="stochasticity of ddim (0 = deterministic)")
    g.add_argument("--seed", type=non_negative_int, default=0, help="image i uses seed + i (default 0)")
    g.add_argument("--num", type=positive_int, default=num, help=f"number of images (default {num})")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per model call (default 64)")


# ------------------------------------------------------------------------------- outputs, before work
def check_out_folder(path: str | Path, *, option: str = "--out") -> Path:
    """`path` as a folder to write into, checked before any work: not a file, and creatable and writable
    (probed with a temporary file in it or in its nearest existing parent; nothing is left behind)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a file; give a folder to write into")
    _probe_writable(path, option=option, shown=path)
    return path


def check_out_file(
    path: str | Path, *, force: bool, option: str = "--out", suffix: str | None = None
) -> Path:
    """`path` as a file to write, checked before any work: the suffix, not a folder, not an existing file
    unless `force`, and its folder creatable and writable."""
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise UsageError(f"{option} must end in {suffix}, got {str(path)!r}")
    if path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a folder; give the name of a file to write")
    if path.exists() and not force:
        raise FileExistsError(f"{str(path)!r} exists; pass --force to replace it")
    _probe_writable(path.parent, option=option, shown=path)
    return path


def _probe_writable(folder: Path, *, option: str, shown: Path) -> None:
    """UsageError unless a file can be created in `folder` (or, while it is missing, its nearest parent)."""
    base = folder.absolute()
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        raise UsageError(f"cannot write {option} {str(shown)!r}: {str(base)!r} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".ddpm-write-test-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UsageError(f"cannot write {option} {str(shown)!r}: creating a file in {str(base)!r} fails "
                         f"({reason}); choose a folder you can write to") from e


# ----------------------------------------------------------------------------------------- models
def model_kind(path: str | Path) -> str:
    """What `path` holds, read from its content, not its name: "sd" (a Stable Diffusion checkpoint),
    "pickle" (a pickled checkpoint: an SD .ckpt, or anything else; only a safe load can tell) or
    "ddpm-<conditioning>" ("ddpm-text", "ddpm-class", …); a missing, damaged or foreign path is an error
    naming why."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run folder or model file: {str(path)!r}")
    from ..io.checkpoint import detect_format, read_safetensors_header

    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "sd"
        if not (path / "config.toml").is_file():
            raise UsageError(f"{str(path)!r} is a folder but neither a ddpm run folder (no config.toml) "
                             "nor a diffusers folder (no model_index.json)")
        from ..io.run_folder import run_model_file

        path = run_model_file(path)
    neither = (f"{str(path)!r} is neither a ddpm model (a run folder or a .safetensors from `ddpm export`) "
               "nor a Stable Diffusion 1.x checkpoint (.ckpt/.safetensors or a diffusers folder)")
    try:
        fmt = detect_format(path)
    except ValueError as e:  # its message starts with the path: say it once
        raise UsageError(f"{neither}: it {str(e).removeprefix(str(path)).lstrip()}") from e
    if fmt != "safetensors":
        return "pickle"
    from ..io.keymaps import SINGLE_FILE

    header = read_safetensors_header(path)
    if any(k.startswith(SINGLE_FILE.unet) for k in header):
        return "sd"
    from ..io.model_file import META_KEY, read_model_meta

    if META_KEY not in (header.get("__metadata__") or {}):
        raise UsageError(f"{neither}: it has no {META_KEY!r} metadata and no {SINGLE_FILE.unet}* tensors")
    meta = read_model_meta(path)
    if "prior" in meta:
        return "ddpm-prior"
    return "ddpm-" + str((meta.get("conditioning") or {}).get("type") or "none")


def sampling_options(args: argparse.Namespace) -> Any:
    """The `SamplingOptions` of the parsed sampling arguments (those a parser lacks stay unset)."""
    from ..pipelines import SamplingOptions

    names = {"sampler": "sampler", "steps": "steps", "spacing": "spacing", "guidance_scale": "guidance",
             "seed": "seed", "clip_skip": "clip_skip"}
    fields = {k: getattr(args, a) for k, a in names.items() if getattr(args, a, None) is not None}
    return SamplingOptions(karras=bool(getattr(args, "karras", False)),
                           exponential=bool(getattr(args, "exponential", False)),
                           eta=float(getattr(args, "eta", 0.0)), **fields)  # fmt: skip


def load_pipeline(model: str) -> Any:
    """The `PixelPipeline` of a run folder or a model .safetensors file, with a clear error otherwise."""
    kind = model_kind(model)
    if kind == "sd":
        raise UsageError(f"{model!r} is a Stable Diffusion checkpoint; generate with it through "
                         "`ddpm txt2img`, `ddpm img2img` or `ddpm inpaint`")
    if kind == "pickle":
        raise UsageError(f"{model!r} is a pickled checkpoint, not a ddpm model (a run folder or a "
                         ".safetensors from `ddpm export`); it was not unpickled")
    from ..pipelines import PixelPipeline

    return PixelPipeline.load(model)


def parse_class(text: str | None, meta: Any) -> int | None:
    """--class as an index or one of the model's class names (`meta`: a `ModelMeta`) -> index."""
    if text is None:
        return None
    if meta.condition != "class":
        raise ValueError(f"--class needs a class-conditional model; this one is {meta.condition}")
    names = meta.class_names or []
    if text in names:
        return names.index(text)
    try:
        index = int(text)
    except ValueError:
        index = -1
    if not 0 <= index < len(names):
        raise ValueError(f"unknown class {text!r}; this model knows {len(names)} classes: {', '.join(names)}")
    return index
