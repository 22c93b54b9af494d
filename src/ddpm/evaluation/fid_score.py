"""`fid`: FID (and KID, precision/recall) of image folders, `.npz` statistics or tensors of images on the
FID Inception-v3's features; `save_folder_stats`; and the `fid` metric of `ddpm eval`.

Files are decoded as the FID tools decode them (`data.decode.read_rgb8`), samples in [-1, 1] are rounded to
8 bits as a PNG of them would be (`to_uint8_rgb`), and the maths is `fid_metrics.py`. A folder's statistics
are cached under `cache_dir()` by a hash of its file names and bytes, the weights file's bytes, the
feature size and the resize mode, so a reference set is pushed through the network once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .fid_metrics import (
    Stats,
    fid_from_stats,
    kernel_inception_distance,
    load_stats,
    precision_recall,
    save_stats,
    stats_of,
)

__all__ = [
    "FIDResult",
    "fid",
    "save_folder_stats",
    "list_images",
    "image_features",
    "folder_features",
    "to_uint8_rgb",
    "cache_dir",
    "resolve_device",
    "register",
]

_CODE_VERSION = 1  # bump when the features of the same images and weights could change


@dataclass
class FIDResult:
    """The figures of one comparison; None where not asked for."""

    fid: float
    dims: int
    resize: str
    num_a: int
    num_b: int
    kid_mean: float | None = None
    kid_std: float | None = None
    kid_subset_size: int | None = None
    precision: float | None = None
    recall: float | None = None

    def lines(self) -> list[str]:
        """`FID: …`, `KID: … ± …`, `precision: … recall: …` as `ddpm fid` prints them."""
        out = [f"FID: {self.fid:.6g}"]
        if self.kid_mean is not None:
            out.append(f"KID: {self.kid_mean:.6g} ± {self.kid_std:.6g}")
        if self.precision is not None:
            out.append(f"precision: {self.precision:.4f} recall: {self.recall:.4f}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_dir() -> Path:
    """Where folder statistics are cached: $DDPM_CACHE/fid, else ~/.cache/ddpm/fid."""
    root = os.environ.get("DDPM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ddpm") / "fid"


def _folder_key(files: list[Path], root: Path, weights: Path, dims: int, resize: str) -> str:
    from ..io.model_file import file_hash

    h = hashlib.sha256(json.dumps({"code": _CODE_VERSION, "dims": dims, "resize": resize,
                                   "weights": file_hash(weights, full=True)}).encode())  # fmt: skip
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Images -> features
# ----------------------------------------------------------------------------------------------


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under `folder` (recursive, sorted); a clear error for a missing or empty folder."""
    from ..data import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"no such folder or statistics file: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is neither a folder of images nor an .npz statistics file")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no images in {root} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def to_uint8_rgb(images: Tensor) -> Tensor:
    """Images in [-1, 1] `[N, C, H, W]` (C = 1 or 3) -> uint8 RGB as a PNG of them would hold."""
    if images.dtype == torch.uint8:
        x = images
    else:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _runs_of_equal_size(batch: list[Tensor]) -> Iterable[list[Tensor]]:
    """Consecutive runs of images of one size (a folder may mix sizes; each run is one network call)."""
    run: list[Tensor] = []
    for t in batch:
        if run and t.shape != run[0].shape:
            yield run
            run = []
        run.append(t)
    if run:
        yield run


def image_features(
    images: Iterable[Tensor] | Tensor,
    model: Any,
    *,
    dims: int = 2048,
    resize: str = "tf",
    batch_size: int = 50,
    total: int | None = None,
    progress: bool = False,
    desc: str = "inception",
) -> Tensor:
    """Features `[N, dims]` float64 of uint8 RGB images `[3, H, W]` (an iterable or `[N, 3, H, W]`)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    out: list[Tensor] = []
    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, leave=False)
    batch: list[Tensor] = []

    def flush() -> None:
        for run in _runs_of_equal_size(batch):
            out.append(model.features(torch.stack(run), dims=dims, resize=resize).double())
        bar.update(len(batch))
        batch.clear()

    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    flush()
    bar.close()
    if not out:
        raise ValueError("no images to compute features of")
    return torch.cat(out)


def folder_features(folder: str | os.PathLike[str], model: Any, **options: Any) -> Tensor:
    """Features of every image under `folder`, decoded as the FID tools decode (`data.decode.read_rgb8`)."""
    from ..data.decode import read_rgb8

    files = list_images(folder)
    return image_features((read_rgb8(p) for p in files), model, total=len(files), **options)


# ----------------------------------------------------------------------------------------------
# The one call
# ----------------------------------------------------------------------------------------------

Source = str | os.PathLike[str] | Tensor


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device!r} is not a device name (auto, cpu, cuda, cuda:1, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    return dev


class _Side:
    """One argument of `fid`: a folder, an `.npz` file or a tensor of images; features/stats on demand."""

    def __init__(self, source: Source, name: str) -> None:
        self.source, self.name = source, name
        self.is_stats = not isinstance(source, Tensor) and Path(source).suffix.lower() == ".npz"
        self._features: Tensor | None = None

    def features(self, model: Callable[[], Any], opts: dict[str, Any]) -> Tensor:
        if self.is_stats:
            raise ValueError(f"{self.name} is a statistics file ({self.source}); KID and precision/recall "
                             "need images, not .npz statistics: give a folder")
        if self._features is None:
            if isinstance(self.source, Tensor):
                imgs = to_uint8_rgb(self.source)
                self._features = image_features(imgs, model(), total=len(imgs), desc=self.name, **opts)
            else:
                self._features = folder_features(self.source, model(), desc=self.name, **opts)
        return self._features

    def stats(
        self, model: Callable[[], Any], opts: dict[str, Any], weights: Path | None, cache: Path | None
    ) -> Stats:
        if self.is_stats:
            return load_stats(self.source)
        if isinstance(self.source, Tensor) or cache is None or self._features is not None:
            return stats_of(self.features(model, opts))
        root = Path(self.source)
        files = list_images(root)
        path = cache / f"{_folder_key(files, root, weights, opts['dims'], opts['resize'])}.npz"
        if path.is_file():
            return load_stats(path)
        stats = stats_of(self.features(model, opts))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_stats(path, stats, folder=str(root.resolve()))
        return stats


def fid(
    a: Source,
    b: Source,
    *,
    weights: str | os.PathLike[str] | None = None,
    dims: int = 2048,
    resize: str = "tf",
    batch_size: int = 50,
    device: str | torch.device = "auto",
    kid: bool = False,
    pr: bool = False,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    cache: bool | str | os.PathLike[str] = True,
    progress: bool = False,
    model: Any = None,
    method: str = "auto",
    labels: tuple[str, str] = ("A", "B"),
) -> FIDResult:
    """FID (and with `kid` / `pr`, KID and precision/recall) between `a` and `b`: image folders, `.npz`
    statistics (FID only) or tensors of images `[N, C, H, W]` in [-1, 1] or uint8.

    `weights`: the Inception weights file (else $DDPM_INCEPTION_WEIGHTS; see `inception.load_inception`);
    `model` a loaded `FIDInceptionV3` to use instead. `cache`: True (the default folder, `cache_dir()`), a
    folder, or False; folder statistics are looked up there by content hash.
    precision is the share of `b` inside `a`'s manifold: give the real images as `a`. `method`: see
    `fid_from_stats`. `labels` name the two sets in progress bars and messages.
    """
    from .inception import DIMS, RESIZE_MODES, load_inception, weights_path

    if dims not in DIMS:
        raise ValueError(f"--dims must be one of {', '.join(map(str, DIMS))}, got {dims}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    sides = [_Side(a, labels[0]), _Side(b, labels[1])]
    for side in sides:
        if not isinstance(side.source, Tensor) and not side.is_stats:
            list_images(side.source)  # a missing or empty folder fails before the weights load
        elif side.is_stats and not Path(side.source).is_file():
            raise FileNotFoundError(f"no such statistics file: {side.source}")
    if (kid or pr) and any(s.is_stats for s in sides):
        raise ValueError("KID and precision/recall need images, not .npz statistics: give two folders")
    need_model = not all(s.is_stats for s in sides)
    path = weights_path(weights) if model is None and need_model else None
    loaded: list[Any] = [model]

    def get_model() -> Any:
        if loaded[0] is None:
            loaded[0] = load_inception(path, device=resolve_device(device))
        return loaded[0]

    opts = dict(dims=dims, resize=resize, batch_size=batch_size, progress=progress)
    cache_path = None if cache is False or path is None else (cache_dir() if cache is True else Path(cache))
    result_kid = result_pr = None
    if kid or pr:
        fa, fb = (s.features(get_model, opts) for s in sides)
        if kid:
            result_kid = kernel_inception_distance(fa, fb, subsets=kid_subsets, subset_size=kid_subset_size)
        if pr:
            result_pr = precision_recall(fa, fb)
    sa, sb = (s.stats(get_model, opts, path, cache_path) for s in sides)
    value = fid_from_stats(sa, sb, method=method)
    if not math.isfinite(value):
        raise ValueError("FID came out non-finite; check the images and the weights file")
    return FIDResult(
        fid=value, dims=int(sa.mu.size), resize=resize, num_a=sa.count, num_b=sb.count,
        kid_mean=result_kid[0] if result_kid else None, kid_std=result_kid[1] if result_kid else None,
        kid_subset_size=result_kid[2] if result_kid else None,
        precision=result_pr[0] if result_pr else None, recall=result_pr[1] if result_pr else None,
    )  # fmt: skip


def save_folder_stats(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    dims: int = 2048,
    resize: str = "tf",
    batch_size: int = 50,
    device: str | torch.device = "auto",
    progress: bool = False,
    model: Any = None,
) -> Stats:
    """Write the `mu` / `sigma` of `folder`'s images to `out` (pytorch-fid's `--save-stats`)."""
    from .inception import DIMS, RESIZE_MODES, load_inception

    if dims not in DIMS:
        raise ValueError(f"--dims must be one of {', '.join(map(str, DIMS))}, got {dims}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    list_images(folder)
    model = model or load_inception(weights, device=resolve_device(device))
    feats = folder_features(folder, model, dims=dims, resize=resize, batch_size=batch_size, progress=progress)
    stats = stats_of(feats)
    save_stats(out, stats, dims=dims, resize=resize)
    return stats


# ----------------------------------------------------------------------------------------------
# `ddpm eval --metric fid`
# ----------------------------------------------------------------------------------------------


def _fid_metric(ctx: Any) -> Any:
    from .metrics import MetricResult

    o = ctx.options
    samples, _ = ctx.samples()
    res = fid(o.fid_reference, to_uint8_rgb(samples), weights=o.fid_weights, dims=o.fid_dims,
              resize=o.fid_resize, progress=o.progress, labels=("reference", "samples"))  # fmt: skip
    note = (f"Inception-v3 pool features (dims {res.dims}, --resize {res.resize}): {res.num_b} samples vs "
            f"{res.num_a or 'the'} reference images of {o.fid_reference}")
    return MetricResult("fid", res.fid, note, {"reference": str(o.fid_reference), **res.to_dict()})


def _fid_unavailable(ctx: Any) -> str | None:
    if getattr(ctx.options, "fid_reference", None) is None:
        return ("fid compares samples with real images: give --reference DIR_OR_NPZ (and the Inception "
                "weights, --weights FILE or $DDPM_INCEPTION_WEIGHTS)")
    if ctx.conditioning not in ("none", "class"):
        return f"fid needs unconditional or class-conditional samples; {ctx.conditioning} models need prompts"
    return None


def register() -> None:
    """Add `fid` to `ddpm.evaluation.METRICS` (once)."""
    from .metrics import METRICS, Metric, register_metric

    if "fid" not in METRICS:
        register_metric(Metric("fid", _fid_metric, "FID on the standard Inception-v3 features vs --reference",
                               _fid_unavailable))  # fmt: skip
