"""`ddpm convert`: Stable Diffusion checkpoints between formats — a pickled `.ckpt`/`.bin` to `.safetensors`,
a single file to a diffusers folder and back. Inputs are recognised by content and read without running
any code they carry."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from ..config.choices import PREDICTIONS
from ._common import check_out_file, check_out_folder

HELP = "convert checkpoints: .ckpt -> .safetensors, single file <-> diffusers folder"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help=HELP,
        description=(
            "Convert a checkpoint. File to .safetensors file: every tensor is copied as it is (keys "
            "unchanged, EMA copies included), only the container changes, so it works for any weights file. "
            "Single file to folder, folder to file or folder to folder: the Stable Diffusion 1.x model is "
            "loaded (EMA weights preferred) and written in the other layout; --prediction or --no-ema make a "
            "file-to-file conversion such a model conversion too. Pickled inputs are read with a loader that "
            "cannot run code; a file that needs code is refused."
        ),
        epilog=(
            "examples: ddpm convert v1-5.ckpt v1-5.safetensors | "
            "ddpm convert v1-5.safetensors --to folder sd15/ | ddpm convert sd15/ sd15.safetensors"
        ),
    )
    p.add_argument("source", help="a checkpoint file (.ckpt, .bin, .pt, .safetensors) or a diffusers folder")
    p.add_argument("dest", help="the .safetensors file or the folder to write")
    p.add_argument("--to", choices=("file", "folder"),
                   help="output layout (default: file if DEST ends in .safetensors, else folder)")
    p.add_argument("--half", action="store_true",
                   help="store floating weights as float16 (default: as the source stores them)")
    p.add_argument("--no-ema", action="store_true",
                   help="use the plain UNet weights even where the file has EMA ones (model conversions)")
    p.add_argument("--prediction", choices=PREDICTIONS,
                   help="what the UNet predicts, recorded in the output (weights cannot show it; "
                        "default eps)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    src, dest = Path(args.source), Path(args.dest)
    if not src.exists():
        raise FileNotFoundError(f"no such file or folder: {args.source!r}")
    to = args.to or ("file" if dest.suffix == ".safetensors" else "folder")
    if to == "file" and dest.suffix != ".safetensors":
        raise ValueError(f"a single file is written as .safetensors; got {args.dest!r}")
    if to == "folder" and dest.suffix == ".safetensors":
        raise ValueError(f"--to folder needs a folder name, not {args.dest!r}")
    if dest.resolve() == src.resolve():
        raise ValueError("source and destination are the same path")
    if dest.exists():
        if not args.force:
            raise FileExistsError(f"{args.dest!r} exists; pass --force to replace it")
        if to == "folder" and not dest.is_dir():
            raise NotADirectoryError(f"{args.dest!r} exists and is not a folder")
        if to == "folder" and any(dest.iterdir()) and not (dest / "model_index.json").is_file():
            raise ValueError(f"{args.dest!r} is a folder with other content, not a diffusers folder; "
                             "--force only replaces a diffusers folder: pick a new or empty folder")
    if to == "file":
        check_out_file(dest, force=True, option="DEST")  # existence was judged above
    else:
        check_out_folder(dest, option="DEST")

    import torch

    from ..io.checkpoint import load_state_dict
    from ..io.model_file import file_hash
    from ..io.sd import (
        load_stable_diffusion,
        plain_tensors,
        save_diffusers_folder,
        save_single_file,
        write_safetensors,
    )

    dtype = torch.float16 if args.half else None
    if src.is_file() and to == "file" and args.prediction is None and not args.no_ema:
        tensors = plain_tensors(load_state_dict(src), dtype)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(dest, tensors, {"format": "pt"})
        print(f"wrote {dest}: {len(tensors)} tensors copied from {src.name} (sha256 {file_hash(dest)})")
        return 0
    models = load_stable_diffusion(src, prefer_ema=not args.no_ema, prediction=args.prediction)
    dtype = dtype or models.source_dtype  # float16 weights stay float16 (loaded as float32: exact)
    if to == "file":
        save_single_file(models, dest, dtype=dtype)
        print(f"wrote {dest}: Stable Diffusion single file from {src.name} (sha256 {file_hash(dest)})")
    else:
        if dest.is_dir():
            shutil.rmtree(dest)  # --force: a stale component (e.g. an old .bin) must not outlive the rewrite
        save_diffusers_folder(models, dest, dtype=dtype)
        parts = "unet, vae, text_encoder, tokenizer, scheduler"
        print(f"wrote {dest}/: diffusers folder ({parts}) from {src.name}")
    return 0
