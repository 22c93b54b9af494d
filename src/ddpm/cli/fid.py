"""`ddpm fid`: FID (with --kid, KID; with --pr, precision/recall) between two image folders or `.npz`
statistics on the standard FID Inception-v3 features, and `--save-stats` to write a folder's statistics."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import check_out_file, positive_int

HELP = "FID / KID / precision-recall of two image folders or .npz statistics (Inception-v3 features)"
DIMS = (64, 192, 768, 2048)  # = ddpm.evaluation.inception.DIMS (a test holds them equal)
RESIZE_MODES = ("tf", "pytorch-fid")  # = ddpm.evaluation.inception.RESIZE_MODES


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "fid",
        help=HELP,
        description=HELP + ". The weights are your copy of the 2015 Inception file "
        "(pt_inception-2015-12-05-6726825d.pth of pytorch-fid or weights-inception-2015-12-05-6726825d.pth "
        "of torch-fidelity; nothing is downloaded). --resize tf reproduces torch-fidelity and the original "
        "TensorFlow code, --resize pytorch-fid reproduces pytorch-fid. Folder statistics are cached by "
        "content hash ($DDPM_CACHE/fid or ~/.cache/ddpm/fid).",
        epilog="examples: ddpm fid real/ samples/ --weights pt_inception-2015-12-05-6726825d.pth --kid --pr; "
        "ddpm fid --save-stats real/ real.npz; ddpm fid real.npz samples/",
    )
    p.add_argument("a", metavar="A", help="a folder of images or an .npz with mu/sigma (the reference)")
    p.add_argument("b", metavar="B", help="a folder of images or an .npz (--save-stats: the .npz to write)")
    p.add_argument("--save-stats", action="store_true",
                   help="write the statistics of folder A to the .npz B instead of comparing")  # fmt: skip
    p.add_argument("--weights", help="the Inception weights file (default: $DDPM_INCEPTION_WEIGHTS)")
    p.add_argument("--dims", type=int, choices=DIMS, default=2048,
                   help="feature size: 64, 192, 768 or 2048 (pool3, the standard; default)")  # fmt: skip
    p.add_argument("--resize", choices=RESIZE_MODES, default="tf",
                   help="resize to 299 as torch-fidelity / TF (tf, default) or as pytorch-fid")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=50,
                   help="images per network call (default 50)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, …")
    p.add_argument("--kid", action="store_true", help="also the kernel inception distance (mean ± std)")
    p.add_argument("--kid-subsets", type=positive_int, default=100, help="KID subsets (default 100)")
    p.add_argument("--kid-subset-size", type=positive_int, default=1000,
                   help="KID subset size (default 1000, or the smaller set's size)")  # fmt: skip
    p.add_argument("--pr", action="store_true", help="also improved precision and recall (k = 3; A is real)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached folder statistics")
    p.add_argument("--force", action="store_true", help="with --save-stats: replace B if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.save_stats:
        out = check_out_file(args.b, force=args.force, option="the output", suffix=".npz")
        if args.kid or args.pr:
            raise ValueError("--kid and --pr compare two sets; --save-stats writes one set's mu and sigma")
        from ..evaluation.fid_score import save_folder_stats

        stats = save_folder_stats(args.a, out, weights=args.weights, dims=args.dims, resize=args.resize,
                                  batch_size=args.batch_size, device=args.device,
                                  progress=not args.quiet)  # fmt: skip
        print(f"wrote {out} (mu [{stats.mu.size}], sigma [{stats.mu.size}, {stats.mu.size}] of "
              f"{stats.count} images, --resize {args.resize})")
        return 0
    from ..evaluation.fid_score import fid

    result = fid(args.a, args.b, weights=args.weights, dims=args.dims, resize=args.resize,
                 batch_size=args.batch_size, device=args.device, kid=args.kid, pr=args.pr,
                 kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                 cache=not args.no_cache, progress=not args.quiet)  # fmt: skip
    for line in result.lines():
        print(line)
    return 0
