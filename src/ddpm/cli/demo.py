"""`ddpm demo` (what `make demo` runs): train the packaged class-conditional digits model with
classifier-free guidance, draw 10 samples per class with dpmpp_2m, save the grid and print its metrics."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from . import UsageError
from ._common import check_out_folder, finite_float, non_negative_int, positive_int

HELP = "train a small class-conditional digits model, sample a grid, print its metrics"

# Keys that training derives from [data] and [diffusion] and writes back into the run's config.toml.
_RESOLVED_MODEL_KEYS = ("in_channels", "out_channels", "num_classes", "learned_variance")
# Keys that change how a run executes, not what it learns: an existing demo run is still "the same run".
_HOW_TRAIN_KEYS = (
    "steps", "num_threads", "device", "compile", "log_every", "checkpoint_every", "keep_last", "sample_every",
    "max_nonfinite",
)  # fmt: skip


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help=HELP,
        description=HELP + " (about 5 minutes of training on 2 CPU cores). An existing demo run with the "
        "same config is reused, an interrupted one is resumed.",
        epilog="example: ddpm demo --set train.steps=500 --out runs/quick-demo",
    )
    p.add_argument("--out", default="runs/demo", help="the run folder (default runs/demo)")
    p.add_argument("--config", metavar="FILE", help="a TOML config instead of the packaged demo config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.steps=500 (repeatable)")  # fmt: skip
    p.add_argument(
        "--retrain", action="store_true", help="delete an existing demo run in --out and train anew"
    )
    p.add_argument("--per-class", type=positive_int, default=10, help="samples per class (default 10)")
    p.add_argument("--guidance", type=finite_float, metavar="SCALE",
                   help="guidance scale (default: the config's)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    p.add_argument("--bpd-num", type=positive_int, default=50,
                   help="held-out images for bits/dim (default 50; each costs T model calls)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _comparable(config: Any) -> dict[str, Any]:
    from ..config import config_to_dict

    d = config_to_dict(config)
    d["model"] = {k: v for k, v in d["model"].items() if k not in _RESOLVED_MODEL_KEYS}
    d["train"] = {k: v for k, v in d["train"].items() if k not in _HOW_TRAIN_KEYS}
    return d


def _prepare_run(config: Any, run_dir: Path, *, retrain: bool) -> str:
    """ "train", "resume" or "reuse": what to do with `run_dir` for `config` (deleting it under --retrain)."""
    from ..config import load_config

    saved = run_dir / "config.toml"
    if retrain and run_dir.exists():
        if not saved.is_file():
            raise ValueError(
                f"{run_dir} exists and is not a run folder (no config.toml); choose another --out"
            )
        shutil.rmtree(run_dir)
    if not run_dir.exists():
        return "train"
    if not saved.is_file():
        raise ValueError(f"{run_dir} exists and is not a run folder (no config.toml); choose another --out")
    if _comparable(load_config(saved)) != _comparable(config):
        raise ValueError(f"{run_dir} holds a run with another config; pass --retrain to replace it")
    if not (run_dir / "latest").is_file():
        return "train"
    return "reuse" if _trained_step(run_dir) >= config.train.steps else "resume"


def _trained_step(run_dir: Path) -> int:
    """The step of the run's latest complete checkpoint."""
    from ..io.model_file import read_meta
    from ..io.run_folder import run_model_file

    return read_meta(run_model_file(run_dir)).training.step


def run(args: argparse.Namespace) -> int:
    from .. import configs
    from ..config import load_config

    t_start = time.perf_counter()
    config = load_config(args.config or configs.path("demo"), args.overrides)
    if config.data.condition != "class":
        raise ValueError("the demo samples one row per class: it needs data.condition = 'class'")
    out = check_out_folder(args.out)
    config.run.dir, config.run.name = str(out.parent), out.name
    run_dir = out

    action = _prepare_run(config, run_dir, retrain=args.retrain)
    t0 = time.perf_counter()
    if action == "reuse":
        print(f"reusing the trained demo in {run_dir} (pass --retrain to train again)")
    else:
        from ..training import TrainingDiverged, TrainingInterrupted, train

        print(f"{'resuming' if action == 'resume' else 'training'} the demo model in {run_dir} "
              f"({config.train.steps} steps, batch {config.train.batch_size})")  # fmt: skip
        try:
            train(config, resume=run_dir if action == "resume" else None, progress=not args.quiet)
        except TrainingDiverged as error:
            raise UsageError(str(error)) from error
        except TrainingInterrupted as stop:  # SIGTERM / Ctrl-C, checkpoint saved: the demo resumes itself
            raise TrainingInterrupted(stop.reason, step=stop.step, run_dir=stop.run_dir,
                                      resume="the same `ddpm demo` command") from None
    t_train = time.perf_counter() - t0

    import torch

    from ..evaluation import (
        EvalContext,
        EvalOptions,
        balanced_labels,
        evaluate,
        format_table,
        results_to_dict,
    )
    from ..io.images import make_grid, png_metadata, save_png
    from ..pipelines import PixelPipeline, SamplingOptions

    pipe = PixelPipeline.load(run_dir)
    k = int(pipe.num_classes or 0)
    num = k * args.per_class
    labels = balanced_labels(num, k)
    t0 = time.perf_counter()
    with torch.no_grad():
        options = SamplingOptions(seed=args.seed, guidance_scale=args.guidance)
        images, metas = pipe.generate(num, class_labels=labels, options=options, progress=not args.quiet)
    t_sample = time.perf_counter() - t0
    grid_meta = dict(metas[0], grid=f"{k} rows (classes 0-{k - 1}) x {args.per_class}, seeds {args.seed}+i")
    grid_path = save_png(run_dir / "samples.png", make_grid(images, args.per_class), png_metadata(grid_meta))

    t0 = time.perf_counter()
    options = EvalOptions(num=num, seed=args.seed, bpd_num=args.bpd_num, progress=not args.quiet)
    ctx = EvalContext(pipe, options, samples=images, sample_labels=labels)
    results = evaluate(ctx, ["accuracy", "fd", "bpd"])
    t_eval = time.perf_counter() - t0
    total = time.perf_counter() - t_start

    m = metas[0]
    print(f"\nsamples: {grid_path}  ({k} classes x {args.per_class}, {m.get('sampler')}, "
          f"{m.get('steps')} steps, guidance {m.get('guidance_scale')})")  # fmt: skip
    print(format_table(results))
    print(
        f"time: training {t_train:.0f} s, sampling {t_sample:.1f} s, metrics {t_eval:.0f} s, "
        f"total {total:.0f} s"
    )
    acc, fd = results["accuracy"], results["fd"]
    verdict = acc.value >= 0.97 and fd.details["ratio"] <= 2.0
    print(f"goal (accuracy >= 0.97, fd <= 2x floor): {'met' if verdict else 'NOT met'}")
    blob = {
        "run": str(run_dir), "samples": str(grid_path), "action": action,
        "seconds": {"train": t_train, "sample": t_sample, "metrics": t_eval, "total": total},
        "metrics": results_to_dict(results), "goal_met": verdict,
    }  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(blob, indent=2) + "\n")
    return 0
