"""`ddpm eval`: bits/dim on held-out data, Fréchet distance beside its real-data floor, and class accuracy
judged by the project's own classifier."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from . import UsageError
from ._common import add_sampling_args, check_out_file, load_pipeline, positive_int, sampling_options

HELP = ("measure a model: fd (vs its floor), class accuracy, bits/dim, fid (vs --reference); clip-score "
        "of images; retrieval")
# Metrics of files rather than of a pixel model's samples: they take their own inputs.
FILE_METRICS = ("clip-score", "retrieval")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help=HELP,
        description=HELP + ". fd and accuracy use features and predictions of a small classifier trained "
        "once on the model's dataset (cached); the fd floor is the distance between two disjoint sets of "
        "real images of the same size and class mix, so fd/floor near 1 means as close as real data gets.",
        epilog="examples: ddpm eval --model runs/demo --metric fd,accuracy --num 1000 --out metrics.json; "
        "ddpm eval --metric clip-score --clip clip-vit-large-patch14/ --images out/",
    )
    p.add_argument("--model", help="a run folder (runs/NAME) or a model .safetensors file (for retrieval: a "
                   "contrastive model file)")
    p.add_argument("--clip", metavar="FOLDER",
                   help="clip-score: a transformers CLIP folder (config.json, model.safetensors, vocab.json, "
                   "merges.txt), e.g. openai/clip-vit-large-patch14")
    p.add_argument("--images", nargs="+", metavar="PNG",
                   help="clip-score: generated PNGs or folders of them (prompts read from their metadata)")
    p.add_argument("--metric", default="all", help="comma-separated metrics (default: all that apply)")
    p.add_argument("--out", help="also write the results as JSON to this file")
    p.add_argument("--bpd-num", type=positive_int, default=100,
                   help="held-out images for bits/dim (each costs T model calls; default 100)")  # fmt: skip
    p.add_argument(
        "--fd-repeats", type=positive_int, default=5, help="real reference draws to average (default 5)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fid_args(p)
    s = p.add_argument_group("sampler sweep (--sweep: quality against counted NFE; --out is then a folder)")
    s.add_argument("--sweep", action="store_true",
                   help="sample the same seeds with each sampler at each NFE (and ddpm at 1000 steps); write "
                        "sweep.csv, sweep.md and sweep.png into --out (default sweep/)")
    s.add_argument("--sweep-samplers", metavar="A,B",
                   help="samplers to compare (default: every Gaussian one)")  # fmt: skip
    s.add_argument("--sweep-nfe", metavar="N,M", default="5,10,15,20,50,100",
                   help="NFE budgets (default 5,10,15,20,50,100)")  # fmt: skip
    add_sampling_args(p, num=1000)
    p.set_defaults(func=run)
    return p


def _add_fid_args(p: argparse.ArgumentParser) -> None:
    """--metric fid: the standard Inception-v3 FID of --num samples against --reference (see `ddpm fid`)."""
    from .fid import DIMS, RESIZE_MODES

    g = p.add_argument_group("fid (the standard Inception-v3 FID; see `ddpm fid --help`)")
    g.add_argument("--reference", help="real images for --metric fid: a folder or an .npz of mu/sigma")
    g.add_argument("--weights", help="the Inception weights file (default: $DDPM_INCEPTION_WEIGHTS)")
    g.add_argument("--dims", type=int, choices=DIMS, default=2048,
                   help="Inception feature size (default 2048)")  # fmt: skip
    g.add_argument("--resize", choices=RESIZE_MODES, default="tf", help="tf (default) or pytorch-fid")


def _fid_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.reference is None and "fid" in str(args.metric).split(","):
        raise UsageError("--metric fid needs --reference DIR_OR_NPZ: the real images to compare with")
    if args.reference is not None:  # checked before any sampling, not after it
        from pathlib import Path

        from ..evaluation.inception import weights_path

        if not Path(args.reference).exists():
            raise FileNotFoundError(f"--reference {args.reference}: no such folder or .npz file")
        weights_path(args.weights)
    return dict(fid_reference=args.reference, fid_weights=args.weights, fid_dims=args.dims,
                fid_resize=args.resize)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.sweep:
        return _run_sweep(args)
    out = check_out_file(args.out, force=True) if args.out else None  # before torch is imported
    from ..evaluation import (
        METRICS,
        EvalContext,
        EvalOptions,
        evaluate,
        format_table,
        parse_metrics,
        results_to_dict,
    )

    wanted = [m.strip() for m in args.metric.split(",") if m.strip()]
    if any(m in FILE_METRICS for m in wanted):
        return _file_metrics(args, wanted, out)
    if args.model is None:
        raise UsageError("--model is required (a run folder or a model file) for the metrics "
                         f"{args.metric}; only {', '.join(FILE_METRICS)} take other inputs")
    names = parse_metrics(args.metric)  # check the names before loading anything
    options = EvalOptions(
        num=args.num, seed=args.seed, sampling=sampling_options(args).replace(seed=None),
        batch_size=args.batch_size, bpd_num=args.bpd_num, fd_repeats=args.fd_repeats, progress=not args.quiet,
        **_fid_options(args),
    )  # fmt: skip
    pipe = load_pipeline(args.model)
    ctx = EvalContext(pipe, options)
    start = time.perf_counter()
    results = evaluate(ctx, names)
    seconds = time.perf_counter() - start
    if not results:
        raise ValueError(f"none of the metrics {', '.join(METRICS)} applies to {args.model}")
    print(format_table(results))
    for result in results.values():  # metrics with a breakdown (alignment) print it under the table
        if "table" in result.details:
            print(result.details["table"])
    print(f"({seconds:.1f} s)")
    if out is not None:
        blob = {
            "model": str(args.model),
            "meta": {k: pipe.meta.to_dict().get(k) for k in ("data", "conditioning", "sampling", "training")},
            "options": options.to_dict(),
            "seconds": seconds,
            "metrics": results_to_dict(results),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(blob, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    """`ddpm eval --sweep`: the table and plot of evaluation/sweep.py for one model."""
    from . import UsageError
    from ._common import check_out_folder

    if args.sampler or args.steps:
        raise UsageError("--sweep chooses the sampler and steps of each run; use --sweep-samplers and "
                         "--sweep-nfe instead of --sampler/--steps")  # fmt: skip
    try:
        nfes = [int(n) for n in args.sweep_nfe.split(",") if n.strip()]
    except ValueError:
        raise UsageError(f"--sweep-nfe takes comma-separated integers, got {args.sweep_nfe!r}") from None
    if args.model is None:
        raise UsageError("--sweep needs --model, the run folder or model file whose samplers are compared")
    fid = _fid_options(args)  # --metric fid: the reference and weights are checked before any sampling
    out = check_out_folder(args.out or "sweep")
    from ..evaluation import SWEEP_SAMPLERS, EvalContext, EvalOptions, sweep

    samplers = [s.strip() for s in (args.sweep_samplers or "").split(",") if s.strip()] or SWEEP_SAMPLERS
    options = EvalOptions(
        num=args.num, seed=args.seed, sampling=sampling_options(args).replace(seed=None),
        batch_size=args.batch_size, fd_repeats=args.fd_repeats, progress=False, **fid,
    )  # fmt: skip
    pipe = load_pipeline(args.model)
    metrics = None if args.metric == "all" else args.metric
    start = time.perf_counter()
    result = sweep(EvalContext(pipe, options), samplers=samplers, nfes=nfes, metrics=metrics, out=out,
                   log=None if args.quiet else print)  # fmt: skip
    print(result.files["md"].read_text())
    print(f"({time.perf_counter() - start:.0f} s) wrote " + ", ".join(str(p) for p in result.files.values()))


def _file_metrics(args: argparse.Namespace, wanted: list[str], out: Any) -> int:
    """clip-score (images against their prompts) and retrieval (a contrastive model on `shapes`)."""
    other = [m for m in wanted if m not in FILE_METRICS]
    if other:
        raise UsageError(f"{', '.join(FILE_METRICS)} are measured on their own inputs; run "
                         f"{', '.join(other)} in a separate ddpm eval call")
    if "clip-score" in wanted and (args.clip is None or not args.images):
        raise UsageError("--metric clip-score needs --clip FOLDER (a CLIP model) and --images PNG… (or "
                         "folders of PNGs)")
    if "retrieval" in wanted and args.model is None:
        raise UsageError("--metric retrieval needs --model, a contrastive model file (ddpm train with "
                         '[run] task = "contrastive")')
    from ..evaluation.harness import format_table, results_to_dict

    start = time.perf_counter()
    results = {}
    if "clip-score" in wanted:
        from ..evaluation.clip_score import clip_preprocess_sizes, image_paths, score_pngs
        from ..io.clip_files import load_clip

        paths = image_paths(args.images)
        model, tokenizer = load_clip(args.clip)
        size, crop = clip_preprocess_sizes(args.clip, model.vision.config.image_size)
        results["clip-score"] = score_pngs(model, tokenizer, paths, size=size, crop=crop,
                                           batch_size=args.batch_size)
    if "retrieval" in wanted:
        from ..evaluation.retrieval import evaluate_retrieval_file

        results["retrieval"] = evaluate_retrieval_file(args.model, num=args.num, seed=args.seed)
    seconds = time.perf_counter() - start
    print(format_table(results))
    for result in results.values():
        if "table" in result.details:
            print(result.details["table"])
    print(f"({seconds:.1f} s)")
    if out is not None:
        blob = {"model": args.model, "clip": args.clip, "seconds": seconds,
                "metrics": results_to_dict(results)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(blob, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
