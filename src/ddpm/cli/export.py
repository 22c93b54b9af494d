"""`ddpm export`: a run's EMA weights as one self-describing .safetensors model file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import check_out_file

HELP = "write a run's EMA weights as one self-describing .safetensors file"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help=HELP,
        description=HELP + " (its config travels as JSON in the file's metadata).",
        epilog="example: ddpm export runs/demo --out demo.safetensors",
    )
    p.add_argument("run", help="a run folder (runs/NAME); its latest checkpoint is exported")
    p.add_argument("--out", required=True, help="the model file to write (.safetensors)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = check_out_file(args.out, force=args.force, suffix=".safetensors")
    src = Path(args.run)
    if not src.is_dir():
        raise FileNotFoundError(f"no such run folder: {args.run!r}")
    from ..io.model_file import file_hash, read_model_meta
    from ..training.export import export_model

    path = export_model(src, out)
    step = (read_model_meta(path).get("training") or {}).get("step")
    print(f"wrote {path} (EMA weights of step {step}, model hash {file_hash(path)})")
    return 0
