"""`ddpm train`: train a model from a TOML config (or continue a run exactly)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import UsageError
from ._common import check_out_folder

HELP = "train a diffusion model (or, with run.task = \"autoencoder\", a KL autoencoder), or resume a run"
DESCRIPTION = """\
Train a diffusion model from a TOML config, or resume a run exactly where it stopped. With
run.task = "autoencoder" the same machinery trains a KL autoencoder (see configs/vae.toml).

The run folder (run.dir/run.name) holds config.toml, checkpoints/, samples/ and metrics.csv.
Ctrl-C or SIGTERM saves a checkpoint, then exits with status 130 or 143 (resume with --resume).
On several GPUs, launch the same command under torchrun:
  torchrun --nproc_per_node N -m ddpm.cli train --config FILE"""
EPILOG = """\
examples:
  ddpm train --config configs/digits.toml --set train.steps=2000 --set run.name=a
  ddpm train --resume runs/a"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="a TOML config (see configs/ for examples)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=1e-4 (repeatable)")  # fmt: skip
    p.add_argument(
        "--resume", metavar="RUN", help="continue the run in this folder from its latest checkpoint"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    config_path: Path | None = Path(args.config) if args.config else None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise FileNotFoundError(f"{args.resume!r} is not a run folder (it has no config.toml)")
        if config_path is None:
            config_path = run_dir / "config.toml"
    elif config_path is None:
        raise UsageError("give --config FILE (examples in configs/) or --resume runs/NAME")
    if not config_path.is_file():
        raise FileNotFoundError(f"config file {str(config_path)!r} does not exist")
    from ..config import load_config  # imports torch: after the checks that need none

    config = load_config(config_path, args.overrides)
    run_dir = Path(args.resume) if args.resume else Path(config.run.dir) / config.run.name
    check_out_folder(run_dir, option="the run folder")  # before the data and model are built

    from ..training import TrainingDiverged, train

    try:
        run_dir = train(config, resume=args.resume, progress=not args.quiet)
    except TrainingDiverged as error:  # its message says what to change and where to resume from
        raise UsageError(str(error)) from error
    print(f"run folder: {run_dir}")
    task = load_config(Path(run_dir) / "config.toml").run.task
    if task == "autoencoder":
        print(f"next: ddpm export {run_dir} --out {Path(run_dir) / 'vae.safetensors'}")
    elif task == "contrastive":
        print(f"next: ddpm eval --metric retrieval --model {run_dir}")
    elif task == "unclip_prior":
        print(f'next: ddpm txt2img --model {run_dir} --decoder DECODER "a red circle" --out '
              f"{Path(run_dir) / 'samples' / 'final'}")
    elif load_config(Path(run_dir) / "config.toml").data.condition == "clip_image":
        print(f"next: ddpm variations --model {run_dir} IN.png --num 4 --out {Path(run_dir) / 'variations'}")
    else:
        print(f"next: ddpm sample --model {run_dir} --out {Path(run_dir) / 'samples' / 'final'}")
    return 0
