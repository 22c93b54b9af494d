"""FID, KID and improved precision/recall on the FID Inception-v3's features, for image folders, `.npz`
statistics or tensors of images.

| metric            | paper                          | computed as                                       |
| ----------------- | ------------------------------ | ------------------------------------------------- |
| FID               | Heusel et al. 2017, Eq. 6      | |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) |
|                   |                                | scipy `sqrtm` in float64 as pytorch-fid (below)   |
| KID               | Bińkowski et al. 2018, Eq. 3   | unbiased MMD^2, k(x, y) = (x.y / d + 1)^3; mean   |
|                   | ("Demystifying MMD GANs")      | ± std over random subsets (as torch-fidelity)     |
| precision, recall | Kynkäänniemi et al. 2019       | the share of one set inside the union of the      |
|                   |                                | other's k-NN balls (k = 3)                        |

Statistics files are `.npz` with pytorch-fid's keys `mu` `[D]` and `sigma` `[D, D]`. Folder statistics are
cached under `cache_dir()` by a hash of the folder's file names and bytes, the weights file's bytes, the
feature size and the resize mode, so a reference set is pushed through the network once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FIDResult",
    "Stats",
    "fid",
    "fid_from_stats",
    "kernel_inception_distance",
    "precision_recall",
    "save_folder_stats",
    "stats_of",
    "save_stats",
    "load_stats",
    "list_images",
    "image_features",
    "folder_features",
    "to_uint8_rgb",
    "cache_dir",
]

_CODE_VERSION = 1  # bump when the features of the same images and weights could change


@dataclass(frozen=True)
class Stats:
    """Mean `[D]` and covariance `[D, D]` (float64, numpy) of a feature set of `count` images, and the
    features `[N, D]` themselves while N <= D (they give the exact low-rank route of `fid_from_stats`)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int = 0
    features: np.ndarray | None = None


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


# ----------------------------------------------------------------------------------------------
# The metrics, on features and statistics
# ----------------------------------------------------------------------------------------------


def stats_of(features: Tensor | np.ndarray) -> Stats:
    """Mean and unbiased covariance (np.cov, rowvar=False) of features `[N, D]`, N >= 2, in float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {f.shape[0]}")
    keep = f if f.shape[0] <= f.shape[1] else None
    return Stats(f.mean(0), np.cov(f, rowvar=False), f.shape[0], keep)


def _trace_sqrt_low_rank(fa: np.ndarray, fb: np.ndarray) -> float:
    """tr((S_a S_b)^1/2) from the features: with S = X^T X / (N - 1) for the centred features X, the
    eigenvalues of S_a S_b are the squared singular values of X_a X_b^T / sqrt((N_a - 1)(N_b - 1)), so the
    trace is that matrix's nuclear norm: an [N_a, N_b] SVD instead of a [D, D] matrix root."""
    xa, xb = fa - fa.mean(0), fb - fb.mean(0)
    scale = math.sqrt((len(fa) - 1) * (len(fb) - 1))
    return float(np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / scale)


def fid_from_stats(a: Stats, b: Stats, *, eps: float = 1e-6, method: str = "auto") -> float:
    """Fréchet distance of N(mu_a, S_a) and N(mu_b, S_b) (Heusel et al. 2017, Eq. 6).

    `method` "sqrtm": (S_a S_b)^1/2 by scipy's Schur-method `sqrtm`, pytorch-fid's procedure. When the root
    comes out non-finite (a singular product: fewer images than feature dimensions), `eps` I is added to both
    covariances first; round-off leaves a small imaginary part, which is dropped (an error if it is large,
    as the root is then not trustworthy). "low-rank": the same trace from the features
    (`_trace_sqrt_low_rank`; exact, and well conditioned where sqrtm is not). "auto" (default): low-rank
    when both `Stats` carry their features (N <= D), else sqrtm. The two agree to about 1e-6 relative
    (tests/test_fid.py).
    """
    from scipy import linalg

    if method not in ("auto", "sqrtm", "low-rank"):
        raise ValueError(f"method must be 'auto', 'sqrtm' or 'low-rank', got {method!r}")
    have = a.features is not None and b.features is not None
    if method == "low-rank" and not have:
        raise ValueError("the low-rank route needs the features of both sets (Stats.features)")
    mu_a, mu_b = np.atleast_1d(a.mu).astype(np.float64), np.atleast_1d(b.mu).astype(np.float64)
    s_a, s_b = np.atleast_2d(a.sigma).astype(np.float64), np.atleast_2d(b.sigma).astype(np.float64)
    if mu_a.shape != mu_b.shape or s_a.shape != s_b.shape or s_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(f"the two statistics do not match: mu {mu_a.shape} vs {mu_b.shape}, sigma "
                         f"{s_a.shape} vs {s_b.shape} (were they made with the same --dims?)")
    diff = mu_a - mu_b
    if have and method != "sqrtm":
        tr_root = _trace_sqrt_low_rank(np.asarray(a.features, np.float64), np.asarray(b.features, np.float64))
        return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * tr_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular products; checked below
        root = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(root).all():
        offset = np.eye(s_a.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    if np.iscomplexobj(root):
        imag = np.max(np.abs(np.diagonal(root).imag))
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"the covariance product's square root has an imaginary part of {imag:.3g}; "
                             "use more images (at least as many as --dims) for a trustworthy FID")
        root = root.real
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(root))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3 (Bińkowski et al. 2018, Eq. 3; m = n)."""
    d = x.shape[1]
    k_xx, k_yy, k_xy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    within = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within - 2 * k_xy.mean())


def kernel_inception_distance(
    features_a: Tensor | np.ndarray,
    features_b: Tensor | np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float, int]:
    """(mean, std, subset size) of the unbiased KID over `subsets` random subsets drawn without replacement.

    The subset size is `subset_size` or the smaller set's size, whichever is less (torch-fidelity refuses
    the latter case; KID is meant for small sets, so we shrink the subsets and report the size used).
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs two feature sets [N, D] of one D, got {a.shape} and {b.shape}")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(a)} and {len(b)}")
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    rng = np.random.RandomState(seed)
    mmds = np.array([
        _poly_mmd2(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
        for _ in range(subsets)
    ])  # fmt: skip
    return float(mmds.mean()), float(mmds.std()), size


def _kth_radius(x: Tensor, k: int, chunk: int) -> Tensor:
    """Distance of each row of `x` to its k-th nearest other row `[N]`."""
    out = []
    for s in range(0, len(x), chunk):
        d = torch.cdist(x[s : s + chunk], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(out)


def _inside(query: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    """For each query row, whether it lies in some ball (centre, radius) `[M]` bool."""
    out = []
    for s in range(0, len(query), chunk):
        d = torch.cdist(query[s : s + chunk], centres)
        out.append((d <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(
    real: Tensor | np.ndarray, fake: Tensor | np.ndarray, *, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision = the share of `fake` inside the
    union of the real k-NN balls, recall = the share of `real` inside the fake ones."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set, "
                         f"got {len(r)} and {len(f)}")
    precision = _inside(f, r, _kth_radius(r, k, chunk), chunk).double().mean()
    recall = _inside(r, f, _kth_radius(f, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


# ----------------------------------------------------------------------------------------------
# Statistics files and the cache
# ----------------------------------------------------------------------------------------------


def save_stats(path: str | os.PathLike[str], stats: Stats, **extra: Any) -> Path:
    """Write `mu` and `sigma` (pytorch-fid's keys), `count`, the features when kept (N <= D) and any `extra`
    scalars to an `.npz` atomically."""
    from ..io.atomic import atomic_write

    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        arrays = {"features": stats.features.astype(np.float32)} if stats.features is not None else {}
        np.savez(f, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count), **arrays,
                 **{k: np.asarray(v) for k, v in extra.items()})  # fmt: skip
    return path


def load_stats(path: str | os.PathLike[str]) -> Stats:
    """`mu`, `sigma` of an `.npz` written by us, pytorch-fid (`--save-stats`) or the TTUR code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such statistics file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                held = ", ".join(z.files) or "none"
                raise ValueError(f"{path} has no 'mu' and 'sigma' arrays (it holds {held}); "
                                 "write one with `ddpm fid --save-stats DIR OUT.npz`")
            count = int(z["count"]) if "count" in z else 0
            feats = np.asarray(z["features"], np.float64) if "features" in z else None
            return Stats(np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64), count, feats)
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz statistics file ({e})") from e
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(f"{path} holds pickled objects; statistics files hold plain arrays only") from e
        raise


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
